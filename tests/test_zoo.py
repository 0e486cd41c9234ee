"""Model zoo: entries match the real architectures, inputs and decode loop are exact."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

from traceforge.cli import app  # noqa: E402
from traceforge.errors import BadInput  # noqa: E402
from traceforge.zoo import ZOO, build_model, count_params_meta, get_entry  # noqa: E402

REQUIRED = ("distilbert-base", "bert-base", "distilgpt2", "gpt2", "mistral-7b", "llama-1b",
            "vit-base", "resnet-50", "tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-vit")


def test_required_entries_and_kinds():
    assert set(REQUIRED) <= set(ZOO)
    assert {e.kind for e in ZOO.values()} == {"encoder", "decoder", "vision"}
    assert ZOO["mistral-7b"].cuda_dtype == "bfloat16"
    for entry in ZOO.values():
        if entry.name.startswith("tiny-"):
            assert entry.params < 200_000, entry.name  # CPU tests stay fast


@pytest.mark.parametrize("name", sorted(ZOO))
def test_param_counts_match_a_meta_build(name):
    # The constants let `zoo list` skip torch; a meta build costs no memory.
    assert count_params_meta(ZOO[name]) == ZOO[name].params


def test_unknown_entry_lists_known_names():
    with pytest.raises(BadInput) as err:
        get_entry("gpt-5")
    assert "gpt-5" in str(err.value) and "tiny-bert" in str(err.value)


def test_build_is_seeded():
    a = build_model("tiny-bert", "cpu", seed=3)
    b = build_model("tiny-bert", "cpu", seed=3)
    c = build_model("tiny-bert", "cpu", seed=4)
    pa_, pb, pc = (next(m.model.parameters()) for m in (a, b, c))
    assert torch.equal(pa_, pb) and not torch.equal(pa_, pc)
    assert a.params == ZOO["tiny-bert"].params


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_greedy_kv_cache_loop_matches_generate(name):
    """The serving loop (prefill + one token per step through the KV cache) must produce what
    transformers' own generate produces with exactly that many tokens forced."""
    m = build_model(name, "cpu")
    ids = torch.randint(0, m.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    ours = m.greedy_ids(ids, 12)
    ref = m.model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                           pad_token_id=0)[:, 10:]
    assert ours.shape == (2, 12)
    assert torch.equal(ours, ref)


def test_run_records_exact_tokens_and_times():
    m = build_model("tiny-gpt2", "cpu")
    stats = m.run(3, 16, 7)
    assert stats.tokens_out == 3 * 7
    assert stats.service_start_ns < stats.first_token_ns <= stats.service_end_ns
    assert stats.gpu_ns is None  # CPU: no CUDA events
    enc = build_model("tiny-bert", "cpu").run(2, 32, 0)
    assert enc.first_token_ns is None and enc.tokens_out == 0


def test_vision_uses_seq_len_as_image_side():
    m = build_model("tiny-vit", "cpu")
    assert tuple(m.synthesise(2, 40).shape) == (2, 3, 40, 40)
    m.run(2, 40, 0)  # a side other than config.image_size works (interpolated positions)


@pytest.mark.parametrize(("name", "shape", "needle"), [
    ("tiny-bert", (1, 600, 0), "600 > 512"),
    ("tiny-bert", (1, 8, 4), "encoder"),
    ("tiny-vit", (1, 4, 0), "smallest"),
    ("tiny-gpt2", (1, 1000, 100), "1100 > 1024"),
])
def test_impossible_shapes_raise_clear_errors(name, shape, needle):
    m = build_model(name, "cpu")
    assert needle in m.check_shape(*shape)
    with pytest.raises(ValueError, match=needle):
        m.run(*shape)


def test_zoo_list_json():
    result = CliRunner().invoke(app, ["zoo", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)["models"]}
    assert rows["mistral-7b"]["params"] > 7e9
    assert rows["mistral-7b"]["weight_bytes"] == rows["mistral-7b"]["params"] * 2
    assert rows["tiny-vit"]["kind"] == "vision"


def test_build_never_seeds_every_cuda_device(monkeypatch):
    # torch.manual_seed seeds every device torch counts (with NVML, which ignores an MPS
    # server's pinning): a client of a server pinned to GPU 1 then failed CUDA's start.
    import torch

    def refuse(seed):
        raise AssertionError("build_model must not seed every CUDA device")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    a = build_model("tiny-bert", "cpu", seed=3)
    b = build_model("tiny-bert", "cpu", seed=3)
    pa, pb = next(a.model.parameters()), next(b.model.parameters())
    assert torch.equal(pa, pb)
