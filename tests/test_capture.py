"""Capture on tiny random models: shapes, parity with Hugging Face, modes, hooks, threads.

Tolerances: activations equal Hugging Face's own outputs within 1e-5 absolute (float32, the
same eager kernels); pattern rows sum to 1 within 1e-5; entries above the diagonal are 0.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from spyglass.hooks import CaptureSpec, MemoryLimitError, capture, estimate_bytes
from spyglass.hooks.spec import KINDS

TEXT = "The cat sat on the mat"


def expected_shape(model, kind, n_pos):
    dims = {"pos": n_pos, "d_model": model.d_model, "n_heads": model.n_heads,
            "n_kv_heads": model.n_kv_heads, "d_head": model.d_head, "d_mlp": model.d_mlp,
            "d_vocab": model.d_vocab}
    return tuple(dims[d] for d in KINDS[kind][1])


def test_every_documented_array_has_its_shape(tiny_model_and_ref):
    model, _ = tiny_model_and_ref
    trace = capture(model, TEXT)
    n = len(trace.tokens)
    kinds = [k for k in KINDS if k != "pos_embed" or model.has_pos_embed]
    for kind in kinds:
        template = KINDS[kind][0]
        names = [template.replace("{L}", str(layer)) for layer in range(model.n_layers)]
        for name in dict.fromkeys(names):
            assert trace[name].shape == expected_shape(model, kind, n), name
            assert trace[name].dtype == np.float32
    assert ("hook_pos_embed" in trace) == (model.source["architecture"] == "gpt2")


def test_t1_labels_match_every_pos_axis(tiny_model_and_ref):
    model, _ = tiny_model_and_ref
    trace = capture(model, TEXT, prepend_bos=True)
    n = len(trace.labels)
    assert n == 7 and trace.labels[0] == "<|endoftext|>" and trace.labels[1] == "The"
    for name, arr in trace.arrays.items():
        kind = name.rsplit(".", 1)[-1]
        if kind in ("hook_attn_scores", "hook_pattern"):
            assert arr.shape[1] == arr.shape[2] == n
        else:
            assert arr.shape[0] == n


def test_gqa_kv_heads_kept_and_mapping_recorded(tiny_llama):
    trace = capture(tiny_llama, TEXT)
    assert trace["blocks.0.attn.hook_q"].shape[1] == 4
    assert trace["blocks.0.attn.hook_k"].shape[1] == 2
    assert trace.provenance["kv_head_of_head"] == [0, 0, 1, 1]


def test_t8_parity_with_hugging_face(tiny_model_and_ref):
    model, reference = tiny_model_and_ref
    trace = capture(model, TEXT)
    ids = torch.tensor([trace.tokens.ids])
    with torch.no_grad():
        out = reference(ids, output_hidden_states=True, output_attentions=True)
    hidden = [h[0].numpy() for h in out.hidden_states]
    # hidden_states[0] is the block input; [L + 1] the output of block L, except the last,
    # which Hugging Face returns after the final norm.
    np.testing.assert_allclose(trace["blocks.0.hook_resid_pre"], hidden[0], atol=1e-5, rtol=0)
    for layer in range(model.n_layers - 1):
        np.testing.assert_allclose(
            trace[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], atol=1e-5, rtol=0
        )
    for layer in range(model.n_layers):
        np.testing.assert_allclose(
            trace[f"blocks.{layer}.attn.hook_pattern"], out.attentions[layer][0].numpy(),
            atol=1e-5, rtol=0,
        )
    np.testing.assert_allclose(trace["logits"], out.logits[0].numpy(), atol=1e-5, rtol=0)


def test_t7_training_mode_caller_gets_eval_capture(tiny_gpt2):
    reference = capture(tiny_gpt2, TEXT)
    tiny_gpt2.bridge.train()
    try:
        first = capture(tiny_gpt2, TEXT)
        second = capture(tiny_gpt2, TEXT)
        assert tiny_gpt2.bridge.training, "the caller's training mode is restored"
    finally:
        tiny_gpt2.bridge.eval()
    for name in reference.names:
        np.testing.assert_array_equal(first[name], second[name])  # no dropout noise
        np.testing.assert_array_equal(first[name], reference[name])
    for layer in range(tiny_gpt2.n_layers):
        pattern = first[f"blocks.{layer}.attn.hook_pattern"]
        np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
        upper = np.triu(np.ones(pattern.shape[1:], dtype=bool), k=1)
        assert (pattern[:, upper] == 0).all()


def test_t7_no_gradients_recorded(tiny_gpt2):
    trace = capture(tiny_gpt2, TEXT)
    assert all(isinstance(a, np.ndarray) for a in trace.arrays.values())
    assert all(p.grad is None for p in tiny_gpt2.bridge.parameters())


def _hook_counts(model):
    return {name: len(point.fwd_hooks) for name, point in model.bridge.hook_dict.items()}


def test_t9_failing_forward_leaves_no_hook_and_keeps_callers(tiny_gpt2):
    fired = []
    point = tiny_gpt2.bridge.hook_dict["blocks.0.hook_resid_mid"]
    caller = point.add_hook(lambda act, hook: fired.append(act.shape))
    before = _hook_counts(tiny_gpt2)
    try:
        def explode(act, hook):
            raise KeyboardInterrupt("simulated interrupt mid-forward")

        bad = tiny_gpt2.bridge.hook_dict["blocks.1.mlp.hook_post"].add_hook(explode)
        before_with_bad = _hook_counts(tiny_gpt2)
        with pytest.raises(KeyboardInterrupt):
            capture(tiny_gpt2, TEXT)
        assert _hook_counts(tiny_gpt2) == before_with_bad
        bad.hook.remove()
        hp = tiny_gpt2.bridge.hook_dict["blocks.1.mlp.hook_post"]
        hp.fwd_hooks = [h for h in hp.fwd_hooks if h is not bad]
        assert _hook_counts(tiny_gpt2) == before

        fired.clear()
        trace = capture(tiny_gpt2, TEXT)
        assert fired == [torch.Size([1, len(trace.tokens), tiny_gpt2.d_model])]
        assert _hook_counts(tiny_gpt2) == before
    finally:
        caller.hook.remove()
        point.fwd_hooks = [h for h in point.fwd_hooks if h is not caller]


def test_t10_two_threads_get_their_own_activations(tiny_llama):
    texts = ["The cat sat on the mat", "A completely different sentence about the sea"]
    alone = [capture(tiny_llama, t) for t in texts]
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = capture(tiny_llama, texts[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        assert results[i].tokens.ids == alone[i].tokens.ids
        for name in alone[i].names:
            np.testing.assert_array_equal(results[i][name], alone[i][name])


def test_spec_selects_kinds_and_layers(tiny_llama):
    spec = CaptureSpec(kinds=("resid_post", "pattern"), layers=(1,))
    trace = capture(tiny_llama, TEXT, spec)
    assert trace.names == ["blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]
    patterned = CaptureSpec.from_patterns(["blocks.*.hook_resid_post"])
    assert capture(tiny_llama, TEXT, patterned).names == [
        "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
    ]


def test_spec_refuses_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="Unknown activation kinds"):
        CaptureSpec(kinds=("resid",))
    with pytest.raises(ValueError, match="has 2 layers"):
        capture(tiny_llama, TEXT, CaptureSpec(layers=(5,)))
    with pytest.raises(ValueError, match="match no hook"):
        capture(tiny_llama, TEXT, CaptureSpec.from_patterns(["blocks.*.nothing"]))


def test_memory_estimate_is_exact_and_enforced(tiny_model_and_ref):
    model, _ = tiny_model_and_ref
    trace = capture(model, TEXT)
    assert estimate_bytes(model, None, len(trace.tokens)) == trace.nbytes
    with pytest.raises(MemoryLimitError, match="over the limit"):
        capture(model, TEXT, max_bytes=trace.nbytes - 1)
    assert capture(model, TEXT, max_bytes=trace.nbytes).nbytes == trace.nbytes


def test_capture_stops_after_the_last_layer_asked_for(tiny_llama):
    full = capture(tiny_llama, TEXT)
    later = tiny_llama.bridge.hook_dict["blocks.1.hook_resid_post"]
    calls = []
    handle = later.add_hook(lambda act, hook: calls.append(1))
    try:
        part = capture(tiny_llama, TEXT, CaptureSpec(kinds=("resid_post", "pattern"),
                                                     layers=(0,)))
    finally:
        handle.hook.remove()
        later.fwd_hooks = [h for h in later.fwd_hooks if h is not handle]
    assert calls == []  # block 1 never ran
    for name in part.names:
        np.testing.assert_array_equal(part[name], full[name])
    assert "logits" not in part.names
