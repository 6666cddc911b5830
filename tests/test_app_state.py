"""The app's shared logic without a browser: escaping, caches, recomputed attention, helpers."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from spyglass.app import figures, state
from spyglass.hooks import ALL_KINDS, CaptureSpec, estimate_bytes
from spyglass.probes import embeddings

TEXT = "the cat saw the dog and the"


# --- escaping --------------------------------------------------------------------------------


def test_esc_turns_markup_into_entities_plotly_decodes():
    assert state.esc('x<script>alert(1)</script>') == "x&lt;script&gt;alert(1)&lt;/script&gt;"
    assert state.esc("a<b<c") == "a&lt;b&lt;c"
    # Plotly decodes numeric entities but shows "&quot;" literally, so quotes are numeric.
    assert state.esc('say "hi"') == "say &#34;hi&#34;"
    assert state.esc("Tom's & Jerry") == "Tom&#39;s &amp; Jerry"


def test_visible_shows_whitespace_and_controls():
    assert state.visible(" the\n\tx\x00") == "␣the↵⇥x⟨00⟩"


def test_visible_keeps_the_gaps_inside_split_character_bytes():
    # ' ∈' cut mid-character: the leading space is a real space, the gap between hex pairs
    # is not, and must not be drawn as one.
    assert state.visible(" ⟨e2 88⟩") == "␣⟨e2 88⟩"
    assert state.visible("⟨88⟩ x") == "⟨88⟩␣x"


def test_tick_labels_are_unique_for_repeated_tokens_and_escaped():
    labels = ("the", " the", " <b>", " the")
    ticks = state.tick_labels(labels)
    assert ticks == ["0: the", "1: ␣the", "2: ␣&lt;b&gt;", "3: ␣the"]
    assert len(set(ticks)) == 4
    assert state.tick_labels(labels, [3, 1]) == ["3: ␣the", "1: ␣the"]


def test_md_keeps_markdown_literal():
    assert state.md("*a* <b> $x$") == "\\*a\\* \\<b\\> \\$x\\$"


# --- the trace cache -------------------------------------------------------------------------


class _Sized:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def test_trace_cache_evicts_least_recent_by_count_and_bytes():
    cache = state.TraceCache(max_entries=2, max_bytes=100)
    cache.get("a", lambda: _Sized(10))
    cache.get("b", lambda: _Sized(10))
    cache.get("a", lambda: _Sized(999))  # hit: refreshes "a", computes nothing
    cache.get("c", lambda: _Sized(10))   # over 2 entries: "b" is the oldest
    assert list(cache._items) == ["a", "c"]
    assert cache.computed == 3
    cache.get("d", lambda: _Sized(95))   # over 100 bytes: everything older goes
    assert list(cache._items) == ["d"]


def test_trace_cache_computes_once_for_concurrent_requests():
    cache = state.TraceCache(max_entries=4, max_bytes=10**9)
    calls = []

    def slow() -> _Sized:
        calls.append(1)
        time.sleep(0.2)
        return _Sized(1)

    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("k", slow)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({id(g) for g in got}) == 1


def test_app_spec_drops_kinds_over_budget_and_refuses_beyond(tiny_llama, monkeypatch):
    n = len(tiny_llama.tokenize(TEXT, prepend_bos=False))
    full, dropped = state.app_spec(tiny_llama, n)
    assert dropped == () and full == CaptureSpec()
    need_full = estimate_bytes(tiny_llama, full, n)
    lean = CaptureSpec(kinds=tuple(k for k in ALL_KINDS if k not in state.DROPPABLE))
    need_lean = estimate_bytes(tiny_llama, lean, n)
    assert need_lean < need_full

    monkeypatch.setattr(state, "trace_budget", lambda: need_lean)
    spec, dropped = state.app_spec(tiny_llama, n)
    assert dropped == state.DROPPABLE and spec == lean
    trace = state.compute_trace(tiny_llama, TEXT, bos=False)
    assert "blocks.0.attn.hook_attn_scores" not in trace
    assert "blocks.0.attn.hook_pattern" in trace
    # Without captured scores the Q·K·V steps still recompute them.
    assert state.attention_steps(tiny_llama, trace, 0, 0, 3).captured_scores is None

    monkeypatch.setattr(state, "trace_budget", lambda: need_lean - 1)
    with pytest.raises(MemoryError, match="SPYGLASS_APP_TRACE_MB"):
        state.app_spec(tiny_llama, n)


# --- recomputed attention equals the captured one --------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_recomputed_scores_equal_captured(fixture, request):
    model = request.getfixturevalue(fixture)
    trace = state.compute_trace(model, TEXT, bos=True)
    worst = 0.0
    for layer in range(model.n_layers):
        for head in range(model.n_heads):
            for query in range(len(trace.labels)):
                steps = state.attention_steps(model, trace, layer, head, query)
                worst = max(
                    worst,
                    np.abs(steps.scores - steps.captured_scores).max(),
                    np.abs(steps.weights - steps.captured_weights).max(),
                    np.abs(steps.output - steps.captured_output).max(),
                )
    assert worst < 1e-4


def test_rotary_model_scores_need_the_rotated_vectors(tiny_llama):
    """hook_q/hook_k come before rotation: their dot products are NOT the model's scores."""
    trace = state.compute_trace(tiny_llama, TEXT, bos=False)
    assert "blocks.0.attn.hook_rot_q" in trace.extras
    q = trace["blocks.0.attn.hook_q"][:, 0]  # (pos, d_head), before rotation
    k = trace["blocks.0.attn.hook_k"][:, tiny_llama.kv_head_of(0)]
    unrotated = q @ k.T / np.sqrt(tiny_llama.d_head)
    captured = trace["blocks.0.attn.hook_attn_scores"][0]
    lower = np.tril(np.ones_like(captured, dtype=bool))
    assert np.abs(unrotated - captured)[lower].max() > 1e-3
    steps = state.attention_steps(tiny_llama, trace, 0, 0, len(trace.labels) - 1)
    assert steps.rotary


@pytest.mark.embedded
def test_recomputed_scores_equal_captured_on_embedded(embedded_model):
    trace = state.compute_trace(embedded_model, TEXT, bos=False)
    worst = 0.0
    for layer in (0, 14, 29):
        for head in range(embedded_model.n_heads):
            steps = state.attention_steps(embedded_model, trace, layer, head, 6)
            assert steps.kv_head == head // 3
            worst = max(worst, np.abs(steps.scores - steps.captured_scores).max())
    assert worst < 1e-4


# --- next-token statistics -------------------------------------------------------------------


def test_surprisal_is_cross_entropy_of_the_next_token(tiny_gpt2):
    trace = state.compute_trace(tiny_gpt2, TEXT, bos=True)
    stats = state.next_tokens(trace, k=10)
    logp = torch.log_softmax(torch.tensor(trace["logits"], dtype=torch.float64), dim=-1)
    ids = trace.trace.tokens.ids
    expected = [-logp[i - 1, ids[i]].item() / np.log(2) for i in range(1, len(ids))]
    assert np.isnan(stats.surprisal[0])
    np.testing.assert_allclose(stats.surprisal[1:], expected, atol=1e-6)
    top = torch.topk(logp[-1], 10)
    assert list(stats.top_ids[-1]) == top.indices.tolist()
    np.testing.assert_allclose(stats.top_probs[-1], top.values.exp().numpy(), atol=1e-9)
    assert state.next_tokens(trace, k=10) is stats  # kept on the trace


# --- view helpers ----------------------------------------------------------------------------


def test_first_column_hide_and_rescale():
    pattern = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.6, 0.3, 0.1]])
    shown, first = figures.first_column(pattern, "show")
    assert first == 0 and shown is pattern
    hidden, first = figures.first_column(pattern, "hide")
    assert first == 1
    np.testing.assert_allclose(hidden, [[0, 0], [0.5, 0], [0.3, 0.1]])
    rescaled, _ = figures.first_column(pattern, "rescale")
    np.testing.assert_allclose(rescaled, [[0, 0], [1, 0], [0.75, 0.25]])
    with pytest.raises(ValueError, match="mode must be"):
        figures.first_column(pattern, "drop")


def test_rescale_keeps_future_keys_blank_and_rows_correct():
    # The page passes causal patterns, whose keys after the query are NaN.
    pattern = figures.causal(np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.6, 0.3, 0.1]]))
    rescaled, _ = figures.first_column(pattern, "rescale")
    np.testing.assert_allclose(rescaled, [[np.nan, np.nan], [1, np.nan], [0.75, 0.25]])


def test_block_mean_averages_blocks_and_ignores_nan():
    matrix = np.array([[1, np.nan, np.nan, np.nan],
                       [3, 5, np.nan, np.nan],
                       [1, 1, 2, np.nan],
                       [1, 1, 2, 4]], dtype=float)
    small = figures.block_mean(matrix, 2, 2)
    np.testing.assert_allclose(small, [[3.0, np.nan], [1.0, 8 / 3]])


def test_bin_labels_cover_runs_and_escape():
    assert figures.bin_labels(["<a>", " b", " c", " d"], 2) == ["0–1: &lt;a&gt;…", "2–3: ␣c…"]
    assert figures.bin_labels(["a", "b"], 4) == ["0: a", "1: b"]
    assert figures.bin_labels(["a", "b"], 4, offset=5) == ["5: a", "6: b"]


def test_pca_2d_recovers_the_spread_direction():
    vectors = np.array([[0.0, 0, 0], [2, 0, 0], [4, 0, 0], [6, 0.0, 0]])
    proj = embeddings.pca_2d(vectors)
    np.testing.assert_allclose(np.abs(proj.coords[:, 0]), [3, 1, 1, 3], atol=1e-9)
    np.testing.assert_allclose(proj.explained, [1.0, 0.0], atol=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        embeddings.pca_2d(vectors[:1])


def test_pairwise_cosine_and_distance():
    vectors = np.array([[1.0, 0], [0, 2], [3, 0]])
    np.testing.assert_allclose(embeddings.pairwise(vectors, "cosine"),
                               [[1, 0, 1], [0, 1, 0], [1, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(embeddings.pairwise(vectors, "euclidean"),
                               [[0, np.sqrt(5), 2], [np.sqrt(5), 0, np.sqrt(13)],
                                [2, np.sqrt(13), 0]], atol=1e-12)


def test_text_vectors_pool_the_occurrences(tiny_gpt2):
    trace = state.compute_trace(tiny_gpt2, "a SpongeBob and a SpongeBob", bos=False).trace
    found = embeddings.text_vectors(trace, "SpongeBob", "mean")
    assert len(found.occurrences) == 2
    first = found.occurrences[0].positions
    second = found.occurrences[1].positions
    resid = trace["blocks.1.hook_resid_post"]
    expected = (resid[list(first)].mean(0) + resid[list(second)].mean(0)) / 2
    np.testing.assert_allclose(found.vectors[1], expected, rtol=1e-6)
    assert embeddings.text_vectors(trace, "pineapple") is None


def test_attention_heatmap_labels_every_position_up_to_a_limit():
    small = figures.attention_heatmap(np.zeros((7, 7)), [f"{i}: t" for i in range(7)],
                                      [f"{i}: t" for i in range(7)], "x")
    assert small.layout.yaxis.tickvals == tuple(f"{i}: t" for i in range(7))
    n = 2 * figures.TICKS_ALL
    ticks = [f"{i}: t" for i in range(n)]
    big = figures.attention_heatmap(np.zeros((n, n)), ticks, ticks, "x")
    assert len(big.data[0].y) == n  # every position keeps its own row
    assert big.layout.yaxis.tickvals == tuple(ticks[::2])


def test_attention_view_window_and_blocks():
    pattern = np.tril(np.ones((10, 10))) / np.arange(1, 11)[:, None]  # uniform over the past
    labels = [f"t{i}" for i in range(10)]
    full = figures.attention_view(pattern, labels, "show", max_side=10)
    assert full.notice is None and full.matrix.shape == (10, 10)
    assert np.isnan(full.matrix[0, 1]) and full.matrix[9, 9] == pytest.approx(0.1)
    win = figures.attention_view(pattern, labels, "show", max_side=4, view="window", start=3)
    assert win.q_ticks == ["3: t3", "4: t4", "5: t5", "6: t6"] == win.k_ticks
    assert "window of 4 positions (3–6)" in win.notice
    blocks = figures.attention_view(pattern, labels, "hide", max_side=5, view="downsample")
    # Key 0 hidden: 9 keys in 5 blocks, numbered by their real positions.
    assert blocks.matrix.shape == (5, 5)
    assert blocks.k_ticks == ["1: t1", "2–3: t2…", "4–5: t4…", "6–7: t6…", "8–9: t8…"]
    assert "downsampled on the server to 5×5" in blocks.notice
    with pytest.raises(ValueError, match="view must be"):
        figures.attention_view(pattern, labels, "show", max_side=4, view="zoom")
