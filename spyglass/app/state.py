"""Shared logic of the Streamlit pages: the model, the cached trace, and the view in the URL.

Every page starts the same way::

    from spyglass.app import state

    ctx = state.sidebar()            # model picker, text box, BOS toggle; stops on error
    layer = state.slider_int("layer", "Layer", 0, ctx.model.n_layers - 1, default=0)
    pattern = ctx.trace["blocks.%d.attn.hook_pattern" % layer]   # [head, q_pos, k_pos]

What this module guarantees:

- One model per name per process (:func:`get_model`, ``st.cache_resource``), shared by all
  sessions; its ``lock`` makes their forward passes take turns.
- One forward pass per (model, text, BOS) (:func:`get_trace`), kept in a byte-bounded LRU
  cache shared by all sessions. Moving between layers, heads and pages reads the cached
  :class:`AppTrace`; results derived from it (logit lens, head scores) are kept on it with
  :meth:`AppTrace.derived`, so they too are computed once.
- The view lives in the URL query: the sidebar writes ``model``, ``text`` and ``bos``, and
  the widget helpers (:func:`slider_int`, :func:`selectbox`, :func:`toggle`, :func:`radio`,
  :func:`text_input`) write their own key, so a copied URL reopens the same view.
- Token text is escaped for HTML by :func:`esc` and made visible by :func:`visible`; use
  :func:`tick_labels` for axis labels (unique per position, escaped).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from spyglass.hooks import CaptureSpec, Trace, capture, estimate_bytes
from spyglass.hooks.capture import attached
from spyglass.hooks.spec import ALL_KINDS
from spyglass.model import ContextLengthError, Model, ModelLoadError, load_model
from spyglass.model.embedded import EMBEDDED_NAME

log = logging.getLogger(__name__)

T = TypeVar("T")

ENV_MODEL = "SPYGLASS_MODEL"
PRESETS = (EMBEDDED_NAME, "random:gpt2", "random:llama")
OTHER = "other: hub id or local folder"
DEFAULT_TEXT = "I watched SpongeBob underwater, in a pineapple under the sea."
# Kinds left out when a full trace would not fit the budget: the pages can do without them
# (scores are recomputed for one query on the Q·K·V page; resid_mid and mlp_pre are only
# offered for export).
DROPPABLE = ("attn_scores", "resid_mid", "mlp_pre")
MiB = 2**20
# Above this many positions a side, the attention heatmap shows a window or a downsampled
# view: a million-cell heatmap with a hover label per cell makes the browser stall.
ATTENTION_MAX_SIDE = 128


def _env_mib(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default * MiB
    try:
        return int(raw) * MiB
    except ValueError:
        raise ValueError(f"{name} must be a whole number of MiB, got {raw!r}.") from None


# --- text for HTML ---------------------------------------------------------------------------

_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def esc(text: str) -> str:
    """Escape text for HTML and for Plotly's hover and tick labels.

    Quotes become numeric entities: Plotly decodes ``&#34;`` back to ``"`` but shows
    ``&quot;`` literally.
    """
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace('"', "&#34;").replace("'", "&#39;")
    )


# Bytes of a split character, as model.tokens writes them: ⟨e2 80⟩. Their inner spaces
# separate hex pairs; shown as ␣ they would read as a space byte in the token.
_HEX_GROUP = re.compile(r"(⟨[0-9a-f]{2}(?: [0-9a-f]{2})*⟩)")


def visible(label: str) -> str:
    """A token label with its whitespace and control characters shown as symbols."""
    return "".join(part if _HEX_GROUP.fullmatch(part) else _visible_chars(part)
                   for part in _HEX_GROUP.split(label))


def _visible_chars(label: str) -> str:
    out = []
    for ch in label:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"⟨{ord(ch):02x}⟩")
        else:
            out.append(ch)
    return "".join(out)


_MD_SPECIAL = frozenset("\\`*_{}[]()#+-.!|<>~$:&=\"'")


def md(text: str) -> str:
    """Text for Streamlit's markdown elements (captions, alerts) shown exactly as typed.

    Markdown would turn ``*word*`` into italics and ``$x$`` into maths; a backslash before
    every ASCII punctuation mark keeps each character literal.
    """
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def tick_labels(labels: Sequence[str], positions: Sequence[int] | None = None) -> list[str]:
    """Escaped axis labels ``"3: ␣the"``, unique per position so repeats stay apart."""
    positions = range(len(labels)) if positions is None else positions
    return [f"{p}: {esc(visible(labels[p]))}" for p in positions]


# --- the model --------------------------------------------------------------------------------

# How many times each model was really loaded in this process (tests read it: B1, B4).
LOADS: dict[str, int] = {}


def default_model() -> str:
    """The model to open first: ``$SPYGLASS_MODEL`` or the embedded one."""
    return os.environ.get(ENV_MODEL, "").strip() or EMBEDDED_NAME


@st.cache_resource(show_spinner=False, max_entries=3)
def _load_cached(name: str) -> Model:
    LOADS[name] = LOADS.get(name, 0) + 1
    model = load_model(name)
    # The first forward pass of a fresh model is several times slower than later ones;
    # paying it here, under the loading spinner, keeps the first trace quick.
    capture(model, "Warm up.", CaptureSpec(kinds=("logits",)))
    return model


def get_model(name: str) -> Model:
    """The model called ``name``, loaded once per process and shared by every session."""
    with st.spinner(f"Loading {name} …"):
        return _load_cached(name)


# --- traces -----------------------------------------------------------------------------------


@dataclass
class AppTrace:
    """A :class:`Trace` plus what the app adds to it.

    ``extras`` holds hooks outside :class:`CaptureSpec`, caught in the same forward pass:
    each head's output before the output projection (``blocks.L.attn.hook_z``
    [pos, head, d_head]) and, for rotary models, the queries and keys after rotation
    (``blocks.L.attn.hook_rot_q`` [pos, head, d_head], ``hook_rot_k`` [pos, kv_head, d_head]),
    the vectors whose dot products are the attention scores. ``dropped`` names the kinds
    left out to keep the trace within its memory budget. ``seconds`` is the capture time.
    """

    trace: Trace
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()
    seconds: float = 0.0
    _derived: dict[str, Any] = field(default_factory=dict, repr=False)
    # Re-entrant: a derived result may be computed from another derived result.
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.extras:
            return self.extras[name]
        return self.trace[name]

    def __contains__(self, name: str) -> bool:
        return name in self.extras or name in self.trace

    @property
    def labels(self) -> tuple[str, ...]:
        return self.trace.tokens.labels

    @property
    def nbytes(self) -> int:
        return self.trace.nbytes + sum(a.nbytes for a in self.extras.values())

    def scoring_q(self, layer: int) -> np.ndarray:
        """Queries as they enter q·k: rotated for rotary models. [pos, head, d_head]"""
        rot = f"blocks.{layer}.attn.hook_rot_q"
        return self.extras[rot] if rot in self.extras else self.trace[
            f"blocks.{layer}.attn.hook_q"]

    def scoring_k(self, layer: int) -> np.ndarray:
        """Keys as they enter q·k: rotated for rotary models. [pos, kv_head, d_head]"""
        rot = f"blocks.{layer}.attn.hook_rot_k"
        return self.extras[rot] if rot in self.extras else self.trace[
            f"blocks.{layer}.attn.hook_k"]

    def derived(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per trace and key; later calls return the kept result."""
        with self._lock:
            if key not in self._derived:
                self._derived[key] = compute()
            return self._derived[key]

    def latest(self, key: str, tag: Any, compute: Callable[[], T]) -> T:
        """Like :meth:`derived`, but one slot per key: a new ``tag`` replaces the old value.

        For large results that depend on a choice (an export file for one selection), so
        that trying many choices does not pile them up.
        """
        with self._lock:
            kept = self._derived.get(key)
            if kept is None or kept[0] != tag:
                self._derived[key] = (tag, compute())
            return self._derived[key][1]


class TraceCache:
    """A thread-safe LRU of :class:`AppTrace`, bounded by entries and by total bytes.

    Concurrent requests for one key wait for a single computation instead of each running
    the model.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, AppTrace] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Any, threading.Lock] = {}
        self.computed = 0

    def get(self, key: Any, compute: Callable[[], AppTrace]) -> AppTrace:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                value = compute()
            finally:
                with self._lock:
                    self._key_locks.pop(key, None)
            with self._lock:
                self.computed += 1
                self._items[key] = value
                self._evict()
            return value

    def _evict(self) -> None:
        # The newest entry always stays, even alone over the byte budget.
        while len(self._items) > 1 and (
            len(self._items) > self.max_entries
            or sum(v.nbytes for v in self._items.values()) > self.max_bytes
        ):
            self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def trace_budget() -> int:
    """Most bytes one trace may take (``$SPYGLASS_APP_TRACE_MB``, default 2,560 MiB)."""
    return _env_mib("SPYGLASS_APP_TRACE_MB", 2560)


TRACES = TraceCache(max_entries=8, max_bytes=_env_mib("SPYGLASS_APP_CACHE_MB", 4096))


def app_spec(model: Model, n_tokens: int) -> tuple[CaptureSpec, tuple[str, ...]]:
    """Everything, or, when that would not fit :func:`trace_budget`, all but DROPPABLE."""
    full = CaptureSpec()
    if estimate_bytes(model, full, n_tokens) <= trace_budget():
        return full, ()
    # Limitation: a trace is held whole in memory, patterns growing with the square of the
    # length (about 1 GiB at 1,000 tokens on the embedded model); past the budget the text
    # is refused. Longer texts would need patterns computed per layer on demand.
    lean = CaptureSpec(kinds=tuple(k for k in ALL_KINDS if k not in DROPPABLE))
    need = estimate_bytes(model, lean, n_tokens)
    if need > trace_budget():
        raise MemoryError(
            f"The text has {n_tokens:,} tokens; tracing them on {model.name} needs about "
            f"{need / MiB:,.0f} MiB, over the app's limit of {trace_budget() / MiB:,.0f} MiB. "
            "Shorten the text, or start the app with SPYGLASS_APP_TRACE_MB set higher."
        )
    return lean, DROPPABLE


def compute_trace(model: Model, text: str, bos: bool) -> AppTrace:
    """Run the model once on ``text`` and keep everything the pages show."""
    tokens = model.tokenize(text, prepend_bos=bos)
    spec, dropped = app_spec(model, len(tokens))
    points = model.bridge.hook_dict
    wanted = [
        f"blocks.{layer}.attn.hook_{kind}"
        for layer in range(model.n_layers) for kind in ("rot_q", "rot_k", "z")
    ]
    extra_names = [name for name in wanted if name in points]
    extras: dict[str, np.ndarray] = {}

    def keep(name: str, act: Any) -> None:
        extras[name] = act.detach().float().cpu().numpy()[0]

    started = time.perf_counter()
    # The extra hooks ride along the same forward pass as the capture; the lock is
    # re-entrant, so capture() takes it again inside.
    with model.lock, attached(model, extra_names, keep):
        trace = capture(model, tokens, spec)
    seconds = time.perf_counter() - started
    log.info("Traced %d tokens on %s in %.2f s", len(tokens), model.name, seconds)
    return AppTrace(trace=trace, extras=extras, dropped=dropped, seconds=seconds)


def get_trace(model: Model, text: str, bos: bool) -> AppTrace:
    """The trace of ``text`` on ``model``, computed once per (model, text, BOS)."""
    key = (model.name, id(model), text, bool(bos))
    return TRACES.get(key, lambda: compute_trace(model, text, bos))


# --- the view in the URL ---------------------------------------------------------------------

_SNAPSHOT = "sg:url"  # the query of the session's first run, read once
_KEPT = "sg:keep:"     # values that outlive page changes (widget state does not)
_WIDGET = "sg:w:"
_PAGE = "sg:page"  # the page the last run drew


def _new_page_resets_widgets() -> None:
    """Forget widget state when the page changes, so widgets restart from the kept values.

    Streamlit gives a widget on another page another identity even under the same key, and
    the new widget would otherwise start from its default instead of the value kept here.
    """
    ctx = get_script_run_ctx()
    page = ctx.page_script_hash if ctx is not None else ""
    if st.session_state.get(_PAGE) != page:
        for key in [k for k in st.session_state if str(k).startswith(_WIDGET)]:
            del st.session_state[key]
        st.session_state[_PAGE] = page


def _first_query() -> dict[str, str]:
    if _SNAPSHOT not in st.session_state:
        st.session_state[_SNAPSHOT] = {k: st.query_params[k] for k in st.query_params}
    return st.session_state[_SNAPSHOT]


def initial(key: str, default: T, parse: Callable[[str], T],
            valid: Callable[[T], bool] = lambda _: True) -> T:
    """The value to start a widget at: kept in the session, else from the URL, else default."""
    if _KEPT + key in st.session_state:
        return st.session_state[_KEPT + key]
    raw = _first_query().get(key)
    if raw is not None:
        try:
            value = parse(raw)
        except (TypeError, ValueError):
            log.info("Ignoring URL value %s=%r: it does not parse", key, raw)
        else:
            if valid(value):
                return value
    return default


def remember(key: str, value: Any, url: str | None = None) -> None:
    """Keep ``value`` across pages and write it to the URL (``url`` overrides its text)."""
    st.session_state[_KEPT + key] = value
    text = url if url is not None else _url_text(value)
    if st.query_params.get(key) != text:
        st.query_params[key] = text


def set_value(key: str, value: Any) -> None:
    """Move a bound widget to ``value`` from a callback (before the widget is drawn)."""
    st.session_state[_WIDGET + key] = value
    st.session_state[_KEPT + key] = value


def _url_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _parse_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _prime(key: str, value: Any) -> str:
    wkey = _WIDGET + key
    if wkey not in st.session_state:
        st.session_state[wkey] = value
    return wkey


def slider_int(key: str, label: str, lo: int, hi: int, default: int, where: Any = None,
               **kwargs: Any) -> int:
    """An integer slider bound to ``?key=`` in the URL; a single value shows as fixed text."""
    where = where or st
    start = initial(key, default, int, lambda v: lo <= v <= hi)
    if hi <= lo:
        where.caption(f"{label}: {lo}")
        remember(key, lo)
        return lo
    wkey = _prime(key, start)
    if not lo <= st.session_state[wkey] <= hi:
        st.session_state[wkey] = min(max(st.session_state[wkey], lo), hi)
    value = int(where.slider(label, lo, hi, key=wkey, **kwargs))
    remember(key, value)
    return value


def number_int(key: str, label: str, lo: int, hi: int, default: int, where: Any = None,
               **kwargs: Any) -> int:
    """An integer input bound to ``?key=``, for ranges too wide for a slider."""
    where = where or st
    wkey = _prime(key, initial(key, default, int, lambda v: lo <= v <= hi))
    if not lo <= st.session_state[wkey] <= hi:
        st.session_state[wkey] = min(max(int(st.session_state[wkey]), lo), hi)
    value = int(where.number_input(label, min_value=lo, max_value=hi, step=1, key=wkey,
                                   **kwargs))
    remember(key, value)
    return value


def selectbox(key: str, label: str, options: Sequence[T], default: T, where: Any = None,
              parse: Callable[[str], T] = str, **kwargs: Any) -> T:  # type: ignore[assignment]
    """A selectbox bound to ``?key=``; a URL value not among ``options`` falls back."""
    where = where or st
    options = list(options)
    start = initial(key, default, parse, lambda v: v in options)
    wkey = _prime(key, start if start in options else options[0])
    if st.session_state[wkey] not in options:
        st.session_state[wkey] = default if default in options else options[0]
    value = where.selectbox(label, options, key=wkey, **kwargs)
    remember(key, value)
    return value


def multiselect(key: str, label: str, options: Sequence[str], default: Sequence[str],
                where: Any = None, **kwargs: Any) -> list[str]:
    """A multiselect of strings bound to ``?key=a,b,c``; unknown URL entries are dropped."""
    where = where or st
    options = list(options)

    def parse(raw: str) -> list[str]:
        return [v for v in raw.split(",") if v in options]

    wkey = _prime(key, initial(key, [v for v in default if v in options], parse))
    st.session_state[wkey] = [v for v in st.session_state[wkey] if v in options]
    value = list(where.multiselect(label, options, key=wkey, **kwargs))
    remember(key, value, url=",".join(value))
    return value


def radio(key: str, label: str, options: Sequence[str], default: str, where: Any = None,
          **kwargs: Any) -> str:
    """A radio group of strings bound to ``?key=``."""
    where = where or st
    options = list(options)
    start = initial(key, default, str, lambda v: v in options)
    wkey = _prime(key, start)
    if st.session_state[wkey] not in options:
        st.session_state[wkey] = default
    value = where.radio(label, options, key=wkey, **kwargs)
    remember(key, value)
    return value


def toggle(key: str, label: str, default: bool, where: Any = None, **kwargs: Any) -> bool:
    """An on/off toggle bound to ``?key=1`` / ``?key=0``."""
    where = where or st
    wkey = _prime(key, initial(key, default, _parse_bool))
    value = bool(where.toggle(label, key=wkey, **kwargs))
    remember(key, value)
    return value


def text_input(key: str, label: str, default: str, where: Any = None, area: bool = False,
               **kwargs: Any) -> str:
    """A text input (or area) bound to ``?key=``."""
    where = where or st
    wkey = _prime(key, initial(key, default, str))
    widget = where.text_area if area else where.text_input
    value = widget(label, key=wkey, **kwargs)
    remember(key, value)
    return value


# --- the sidebar every page shares -----------------------------------------------------------


@dataclass
class Context:
    """What a page works on: the loaded model, the text, the BOS choice and the trace."""

    model: Model
    text: str
    bos: bool
    trace: AppTrace

    @property
    def labels(self) -> tuple[str, ...]:
        return self.trace.labels

    @property
    def n_pos(self) -> int:
        return len(self.trace.labels)


def _choose_model() -> str:
    bar = st.sidebar
    start = initial("model", default_model(), str, lambda v: bool(v.strip()))
    preset = start if start in PRESETS else OTHER
    choice = bar.selectbox(
        "Model", [*PRESETS, OTHER], key=_prime("model_pick", preset),
        help="The embedded SmolLM2-135M needs no network; random:* are tiny untrained models.",
    )
    if choice != OTHER:
        remember("model", choice)
        return choice
    typed = bar.text_input(
        "Hub id or folder", key=_prime("model_other", "" if start in PRESETS else start),
        placeholder="gpt2, or /path/to/a/hf/folder",
    ).strip()
    if typed:
        remember("model", typed)
    return typed


def sidebar() -> Context:
    """Render model picker, text box and BOS toggle; load the model and trace the text.

    Stops the page with a readable message (never a traceback) when the model cannot be
    loaded or the text cannot be traced.
    """
    _first_query()
    _new_page_resets_widgets()
    name = _choose_model()
    if not name:
        st.info("Type a Hugging Face hub id or the path of a local model folder in the sidebar.")
        st.stop()
    try:
        model = get_model(name)
    except (ModelLoadError, ValueError, OSError, RuntimeError) as exc:
        st.error(md(f"Could not load model {name!r}. {exc}"))
        st.stop()

    # Limitation: the whole text goes into the URL, so a shared link to a very long text is
    # very long; Chromium and Firefox accept megabytes, some proxies far less.
    text = text_input("text", "Text", DEFAULT_TEXT, where=st.sidebar, area=True, height=120)
    bos = toggle("bos", "Prepend BOS token", model.default_bos, where=st.sidebar,
                 help="Start the text with the tokenizer's beginning-of-sequence token.")
    try:
        with st.spinner("Running the model on the text …"):
            trace = get_trace(model, text, bos)
    except ContextLengthError as exc:
        st.error(md(f"{exc} (In the app: shorten the text.)"))
        st.stop()
    except (ValueError, MemoryError) as exc:
        st.error(md(str(exc)))
        st.stop()
    st.sidebar.caption(
        f"{model.name}: {model.n_layers} layers, {model.n_heads} heads "
        f"({model.n_kv_heads} key/value), d_model {model.d_model} · "
        f"{len(trace.labels)} tokens · traced in {trace.seconds:.2f} s"
    )
    if trace.dropped:
        st.sidebar.warning(
            f"Long text: {', '.join(trace.dropped)} were not kept, to stay within "
            f"{trace_budget() / MiB:,.0f} MiB."
        )
    return Context(model=model, text=text, bos=bos, trace=trace)


@dataclass
class NextTokens:
    """The model's next-token predictions at every position.

    ``surprisal[i]`` is -log2 p(token i | tokens before it) in bits: the cross-entropy of
    the token that actually came next, read from the logits at position i - 1 (NaN at
    position 0, which nothing predicts). ``top_ids`` / ``top_probs`` are ``[pos, k]``, most
    probable first.
    """

    surprisal: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray


def next_tokens(trace: AppTrace, k: int = 10, chunk: int = 256) -> NextTokens:
    """Surprisal and top-k predictions from the trace's logits, computed once per trace."""

    def compute() -> NextTokens:
        logits = trace.trace["logits"]  # (pos, d_vocab)
        ids = np.asarray(trace.trace.tokens.ids)
        n_pos = len(ids)
        surprisal = np.full(n_pos, np.nan, dtype=np.float64)
        top_ids = np.zeros((n_pos, k), dtype=np.int64)
        top_probs = np.zeros((n_pos, k), dtype=np.float64)
        # Chunks bound the float64 copy of the logits to chunk x d_vocab.
        for start in range(0, n_pos, chunk):
            rows = logits[start:start + chunk].astype(np.float64)
            rows -= rows.max(axis=-1, keepdims=True)
            logp = rows - np.log(np.exp(rows).sum(axis=-1, keepdims=True))
            top = np.argpartition(-logp, k - 1, axis=-1)[:, :k]
            order = np.argsort(-np.take_along_axis(logp, top, -1), axis=-1, kind="stable")
            top = np.take_along_axis(top, order, -1)  # (pos, k), most probable first
            top_ids[start:start + len(rows)] = top
            top_probs[start:start + len(rows)] = np.exp(np.take_along_axis(logp, top, -1))
            nxt = np.arange(start + 1, min(start + len(rows) + 1, n_pos))
            surprisal[nxt] = -logp[nxt - 1 - start, ids[nxt]] / np.log(2)
        return NextTokens(surprisal=surprisal, top_ids=top_ids, top_probs=top_probs)

    return trace.derived(f"next_tokens:{k}", compute)


@dataclass
class HeadScores:
    """Per-head scores ``[layer, head]`` from :mod:`spyglass.probes.heads`."""

    entropy: np.ndarray
    first: np.ndarray
    previous: np.ndarray


def head_scores(trace: AppTrace) -> HeadScores:
    """Entropy, first-position weight and previous-token score of every head, once per trace.

    Scored one layer at a time: ``probes.heads`` stacks the patterns it is given, and a
    whole long text's patterns stacked at once would double their memory.
    """
    from spyglass.probes import heads

    def compute() -> HeadScores:
        rows: dict[str, list[np.ndarray]] = {"entropy": [], "first": [], "previous": []}
        for layer in range(trace.trace.n_layers):
            one = trace.trace.subset([f"blocks.{layer}.attn.hook_pattern"])
            rows["entropy"].append(heads.entropy(one)[0])
            rows["first"].append(heads.first_position_weight(one)[0])
            rows["previous"].append(heads.previous_token_score(one)[0])
        return HeadScores(**{k: np.stack(v) for k, v in rows.items()})

    return trace.derived("head_scores", compute)


@dataclass
class AttentionSteps:
    """One head's attention for one query, step by step (keys are positions 0..query).

    ``q`` [d_head] and ``keys`` [key, d_head] are the vectors whose dot products give the
    scores (after rotation for rotary models); ``scores`` = q·k / sqrt(d_head) [key];
    ``weights`` = softmax(scores) [key]; ``values`` [key, d_head]; ``weighted`` =
    weights[:, None] * values; ``output`` = weighted.sum(0) [d_head]. ``captured_*`` are the
    model's own numbers for comparison (None when not kept).
    """

    layer: int
    head: int
    kv_head: int
    query: int
    rotary: bool
    q: np.ndarray
    keys: np.ndarray
    scores: np.ndarray
    weights: np.ndarray
    values: np.ndarray
    weighted: np.ndarray
    output: np.ndarray
    captured_scores: np.ndarray | None
    captured_weights: np.ndarray
    captured_output: np.ndarray | None


def attention_steps(model: Model, trace: AppTrace, layer: int, head: int,
                    query: int) -> AttentionSteps:
    """Recompute head ``head``'s attention at position ``query`` from its q, k and v."""
    kv_head = model.kv_head_of(head)
    rotary = f"blocks.{layer}.attn.hook_rot_q" in trace.extras
    q = trace.scoring_q(layer)[query, head].astype(np.float64)  # (d_head,)
    keys = trace.scoring_k(layer)[:query + 1, kv_head].astype(np.float64)  # (key, d_head)
    values = trace[f"blocks.{layer}.attn.hook_v"][:query + 1, kv_head].astype(np.float64)

    scores = keys @ q / np.sqrt(model.d_head)  # (key,)
    weights = np.exp(scores - scores.max())
    weights /= weights.sum()
    weighted = weights[:, None] * values  # (key, d_head)

    scores_name = f"blocks.{layer}.attn.hook_attn_scores"
    z_name = f"blocks.{layer}.attn.hook_z"
    return AttentionSteps(
        layer=layer, head=head, kv_head=kv_head, query=query, rotary=rotary, q=q,
        keys=keys, scores=scores, weights=weights, values=values, weighted=weighted,
        output=weighted.sum(axis=0),
        captured_scores=(
            trace[scores_name][head, query, :query + 1] if scores_name in trace else None),
        captured_weights=trace[f"blocks.{layer}.attn.hook_pattern"][head, query, :query + 1],
        captured_output=trace[z_name][query, head] if z_name in trace else None,
    )


def layer_head(ctx: Context, where: Any = None) -> tuple[int, int]:
    """Layer and head sliders (URL keys ``layer`` and ``head``), shared by several pages."""
    where = where or st.sidebar
    layer = slider_int("layer", "Layer", 0, ctx.model.n_layers - 1, 0, where=where)
    head = slider_int("head", "Head", 0, ctx.model.n_heads - 1, 0, where=where)
    return layer, head
