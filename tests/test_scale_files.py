"""pack_dir / land_files: what a Ray worker ships back and how it lands."""

from __future__ import annotations

from traceforge.scale.files import land_files, pack_dir


def test_pack_skips_dot_files_and_dot_directories(tmp_path):
    src = tmp_path / "run"
    (src / "timeline" / ".recorder-w00-123").mkdir(parents=True)
    (src / "timeline" / ".recorder-w00-123" / "status.bin").write_bytes(b"\x00")
    (src / "timeline" / ".part-000002.parquet.x.tmp").write_bytes(b"half")
    (src / "timeline" / "part-000001.parquet").write_bytes(b"PAR1")
    (src / "run.json").write_text("{}")
    files = pack_dir(src)
    assert sorted(files) == ["run.json", "timeline/part-000001.parquet"]
    landed = land_files(files, tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in landed) == sorted(files)
    assert (tmp_path / "dest" / "timeline" / "part-000001.parquet").read_bytes() == b"PAR1"
