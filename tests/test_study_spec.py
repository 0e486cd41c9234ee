"""Study spec validation: one line naming the file, key path, bad value and allowed values;
exit 2 and nothing written. Plus the plan: cell names, groups, seeds."""

from __future__ import annotations

import json

import pytest
from trace_cli_helpers import REPO, assert_one_line_error, run_cli

from traceforge.errors import BadInput
from traceforge.study.plan import configurations, grid_cells, plan_groups
from traceforge.study.spec import load_study, scale_workload

BASE = """
name = "t"
backend = "simulate"
repeats = 2
seed = 5
duration_s = 2.0
[mixes.a.models.m]
arrival = { process = "poisson", rate = 20.0 }
[options]
service_ms = 5.0
"""


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("extra, needles", [
    ("[axes]\nbogus = [1, 2]\n",
     ["axes.bogus", "not an option of the simulate backend", "allowed:", "servers",
      "service_ms"]),
    ("[axes]\nservers = [1, 2.5]\n", ["axes.servers[1]", "2.5", "must be an integer"]),
    ("[axes]\nload = [1.0, -2]\n", ["axes.load[1]", "-2", "must be > 0"]),
    ("[axes]\nservice_dist = [\"exp\", \"weird\"]\n",
     ["axes.service_dist", "weird", "unknown service distribution", "const, exp"]),
    ("[axes]\nmode = [\"mps\"]\n", ["axes.mode", "mps", "needs a profile"]),
    ("[capacity]\nslo = { metric = \"p42\", ms = 5 }\n",
     ["capacity.slo.metric", "p42", "p99"]),
    ("[capacity]\nslo = { metric = [\"p99\"], ms = 5 }\n",
     ["capacity.slo.metric = ['p99']", "unknown metric"]),
    ("[capacity]\nslo = { metric = \"p99\", ms = 5 }\nprescreen = \"simulate\"\n",
     ["capacity.prescreen", "already runs on the simulator"]),
    ("[capacity]\nslo = { attainment = 0.99 }\n",
     ["mixes.a.models.m.slo_ms", "attainment needs"]),
    ("[axes]\nload = { capacity = [0.5] }\n", ["axes.load.capacity", "need a [capacity]"]),
    ("[axes]\nload = [0.1, 0.1000000001]\n", ["axes.load", "look the same in cell names"]),
])
def test_bad_study_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, needles):
    spec = write(tmp_path, BASE + extra)
    out = tmp_path / "out"
    code, _, err = run_cli(["study", spec, "-o", out], capsys)
    assert_one_line_error(code, err, str(spec), *needles)
    assert not out.exists()


def test_inline_mix_errors_name_the_study_key_path(tmp_path):
    spec = write(tmp_path, BASE.replace("rate = 20.0", "rate = -1"))
    with pytest.raises(BadInput) as exc:
        load_study(spec)
    assert str(exc.value).startswith(f"{spec}: mixes.a.models.m.arrival.rate = -1")


def test_workload_file_mix_and_missing_file(tmp_path):
    wl = write(tmp_path, "[models.x]\narrival = { process = \"gamma\", rate = 4.0, cv = 2.0 }\n"
                         "slo_ms = 30\n", "w.toml")
    spec = write(tmp_path, BASE.replace("[mixes.a.models.m]\narrival = { process = \"poisson\", "
                                        "rate = 20.0 }\n", f"[mixes.a]\nworkload = \"{wl.name}\"\n"))
    parsed = load_study(spec)
    assert parsed.mixes["a"]["models"]["x"]["arrival"]["rate"] == 4.0
    assert parsed.mixes["a"]["duration_s"] == 2.0  # the study's length fills in
    missing = write(tmp_path, BASE.replace(
        "[mixes.a.models.m]\narrival = { process = \"poisson\", rate = 20.0 }\n",
        "[mixes.a]\nworkload = \"nope.toml\"\n"), "s2.toml")
    with pytest.raises(BadInput, match=r"mixes\.a\.workload = 'nope\.toml': no such file"):
        load_study(missing)


def test_backend_override_revalidates_axes(tmp_path, capsys):
    spec = write(tmp_path, BASE + "[axes]\nservers = [1, 2]\n")
    code, _, err = run_cli(["study", spec, "-o", tmp_path / "o", "--backend", "resident"],
                           capsys)
    assert_one_line_error(code, err, "options.service_ms", "not an option of the resident")


def test_unknown_executor_and_unimplemented_one(tmp_path, capsys):
    spec = write(tmp_path, BASE)
    code, _, err = run_cli(["study", spec, "-o", tmp_path / "o", "--executor", "slurm"], capsys)
    assert_one_line_error(code, err, "--executor", "slurm", "local, ray")
    assert not (tmp_path / "o").exists()


def test_cells_groups_and_seeds(tmp_path):
    spec = load_study(write(tmp_path, BASE + "[axes]\nload = [0.5, 1.0]\n"
                                             "servers = [1, 2]\nservice_dist = [\"exp\"]\n"))
    assert configurations(spec) == [{"servers": 1, "service_dist": "exp"},
                                    {"servers": 2, "service_dist": "exp"}]
    cells = grid_cells(spec, "a", configurations(spec)[1])
    assert [c.name for c in cells] == [
        "a__load=0.5__servers=2__service_dist=exp__r0", "a__load=1__servers=2__service_dist=exp__r0",
        "a__load=0.5__servers=2__service_dist=exp__r1", "a__load=1__servers=2__service_dist=exp__r1"]
    assert [c.seed for c in cells] == [5, 5, 6, 6]
    # null/simulate repeats draw new service times too (service seed = the repeat's trace seed)
    assert cells[0].options == {"service_ms": 5.0, "servers": 2, "service_dist": "exp",
                                "seed": 5}
    assert [c.options["seed"] for c in cells] == [5, 5, 6, 6]
    groups = plan_groups(spec)
    assert [g.key for g in groups] == ["a__servers=1__service_dist=exp",
                                       "a__servers=2__service_dist=exp"]
    assert all(len(g.cells) == 4 and g.resources.num_gpus == 0 for g in groups)
    groups = plan_groups(spec, skip={cells[0].name})
    assert len(groups[1].cells) == 3


def test_load_scales_every_rate_key():
    wl = {"models": {"a": {"arrival": {"process": "mmpp", "rates": [1.0, 4.0],
                                       "mean_dwell_s": [1.0, 2.0]}},
                     "b": {"arrival": {"process": "onoff", "rate": 3.0, "mean_on_s": 1.0,
                                       "mean_off_s": 1.0, "off_rate": 0.5}}}}
    out = scale_workload(wl, 2.0)
    assert out["models"]["a"]["arrival"]["rates"] == [2.0, 8.0]
    assert out["models"]["a"]["arrival"]["mean_dwell_s"] == [1.0, 2.0]
    assert out["models"]["b"]["arrival"]["rate"] == 6.0
    assert out["models"]["b"]["arrival"]["off_rate"] == 1.0
    assert wl["models"]["a"]["arrival"]["rates"] == [1.0, 4.0]  # input untouched


def test_shipped_studies_parse(monkeypatch):
    demo = load_study(REPO / "studies" / "demo-study.toml")
    assert demo.backend == "simulate" and demo.capacity is not None
    # The seed study asks for CUDA and MPS: pretend both exist, to validate everything else.
    import traceforge.backends.resident as resident
    import traceforge.gpu.cuda as cuda

    monkeypatch.setattr(cuda, "require_cuda", lambda *a, **k: None)
    monkeypatch.setattr(resident.shutil, "which", lambda name: f"/usr/bin/{name}")
    seed = load_study(REPO / "studies" / "seed-study.toml")
    assert seed.capacity.prescreen == "simulate"
    assert seed.capacity.profile == "studies/profiles/h200-graphs-derived.json"
    assert seed.capacity.max_probes == 3 and seed.capacity.duration_s == 8.0
    assert set(seed.axes["mode"]) == {"exclusive", "timeslice", "mps", "streams"}
    json.dumps(seed.to_dict())
    # Every GPU study file shipped for the scripts parses too (a typo there costs a device call).
    for name in ("multi-gpu-short", "multi-gpu-50s", "multi-gpu-study"):
        spec = load_study(REPO / "studies" / f"{name}.toml")
        assert set(spec.axes["mode"]) == {"exclusive", "streams"}, name
    assert load_study(REPO / "studies" / "multi-gpu-50s.toml").to_dict()["mixes"]["steady"][
        "duration_s"] == 50.0


def test_prescreen_needs_profile_models(tmp_path, capsys):
    spec = write(tmp_path, BASE.replace('backend = "simulate"', 'backend = "null"')
                 + "[capacity]\nslo = { metric = \"p99\", ms = 5 }\nprescreen = \"simulate\"\n")
    code, _, err = run_cli(["study", spec, "-o", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "capacity.prescreen", "no entry in the profile",
                          "tiny-bert")


def test_header_values_never_reach_study_json_and_retries_count(tmp_path, capsys):
    spec = write(tmp_path, """
name = "h"
backend = "http"
duration_s = 0.2
retries = 1
[mixes.a.models.m]
arrival = { process = "poisson", rate = 20.0 }
[options]
url = "http://127.0.0.1:9"
headers = { Authorization = "Bearer s3cr3t-token" }
""")
    out = tmp_path / "o"
    code, _, err = run_cli(["study", spec, "-o", out], capsys)
    assert code == 1, err  # nothing listens on port 9: the cell fails, recorded
    data = json.loads((out / "study.json").read_text())
    assert data["cells"][0]["status"] == "failed" and "cannot connect" in data["cells"][0]["error"]
    assert data["cells"][0]["attempts"] == 2  # retries = 1: tried twice, both recorded
    assert data["spec"]["options"]["headers"]["Authorization"].startswith("sha256:")
    for path in out.rglob("*"):
        if path.is_file():
            assert b"s3cr3t-token" not in path.read_bytes(), path
