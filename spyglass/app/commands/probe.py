"""``spyglass probe``: is a concept near a word, layer by layer, against a baseline?

Prints, per layer, the similarity of the two words, the same measure against control words
matched to the second word in frequency and token count, the z-score and the rank. With
``--sets`` it also tests whether one set of words is nearer the concept than another.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from spyglass.probes import baselines, concepts

EPILOG = """examples:
  spyglass probe SpongeBob underwater
  spyglass probe Paris France --controls 100 --pool last --json
  spyglass probe SpongeBob underwater --sets sea,ocean,wave,fish desert,sand,dune,cactus
  spyglass probe SpongeBob underwater --templates "My favourite show is {x}." "{x} again?"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe", help="per-layer similarity of two words, with a frequency-matched baseline",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("concept", help="the word probed, e.g. SpongeBob")
    p.add_argument("target", help="the word it may be near, e.g. underwater")
    p.add_argument("--model", default=None, help="model to load (default: embedded)")
    p.add_argument("--controls", type=int, default=200, metavar="N",
                   help="number of control words matched to TARGET (default 200)")
    p.add_argument("--templates", nargs="+", default=None, metavar="T",
                   help="sentences with {x} where the word goes, or a file of them (one "
                        "per line); default: five neutral templates")
    p.add_argument("--context", action="append", default=None, metavar="SENTENCE",
                   help="a sentence containing CONCEPT to read it in (repeatable); "
                        "TARGET and controls still use the templates")
    p.add_argument("--pool", choices=concepts.POOLS, default="mean",
                   help="how a word of several tokens is pooled (default mean)")
    p.add_argument("--measure", choices=baselines.MEASURES, default="centered",
                   help="centered: cosine after subtracting the controls' mean (default); "
                        "cosine: raw; euclidean: distance")
    p.add_argument("--sets", nargs=2, default=None, metavar=("A", "B"),
                   help="comma-separated word sets: test whether A is nearer CONCEPT than B")
    p.add_argument("--permutations", type=int, default=10_000, metavar="N",
                   help="label permutations for --sets (default 10,000)")
    p.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="also list the K nearest tokens of CONCEPT's embedding and its K "
                        "nearest words among TARGET and controls at the best layer")
    p.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                   help="prepend the BOS token to every context read, --sets included (default: "
                        "as the model's tokenizer does); without it a word at the start of a "
                        "--context sentence sits on the attention sink")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _templates(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = []
    for value in values:
        if concepts.PLACEHOLDER in value:
            out.append(value)
        elif Path(value).is_file():
            lines = Path(value).read_text(encoding="utf-8").splitlines()
            out += [line for line in lines if line.strip()]
        else:
            raise ValueError(f"Template {value!r} has no {concepts.PLACEHOLDER} and is not a "
                             f"file; write {concepts.PLACEHOLDER} where the word goes.")
    bad = [t for t in out if concepts.PLACEHOLDER not in t]
    if bad:
        raise ValueError(f"Templates without {concepts.PLACEHOLDER}: {bad}.")
    return out


class _Bar:
    """A tqdm bar on stderr fed by the probes' ``progress(done, total)`` callbacks."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="text", file=sys.stderr,
                            leave=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()


def nearest_share(probe: baselines.PairProbe, share: float = 0.05) -> list[str] | None:
    """Rows where the target ranks within the nearest ``share`` of all words compared.

    None when there are too few controls for rank 1 to be within that share: with 5
    controls, first place is the nearest sixth, and calling it "the nearest 5%" would lie.
    """
    cut = math.floor(share * (probe.baseline.n + 1))
    if cut < 1:
        return None
    return [r["layer"] for r in probe.rows() if r["rank"] <= cut]


def format_table(probe: baselines.PairProbe) -> str:
    b = probe.baseline
    lines = [
        f"{probe.concept} vs {probe.target}",
        f"  concept:  {probe.concept_note}",
        f"  target:   {probe.target_note}",
        f"  controls: {probe.controls.describe()}",
        f"  measure:  {probe.measure_note}; z > 0 means nearer than the average control",
        f"  templates: {len(probe.templates)} (e.g. {probe.templates[0]!r})",
        "",
        f"{'layer':>5} {'value':>8} {'ctrl mean':>9} {'ctrl sd':>8} {'z':>6} {'rank':>8}",
    ]
    for r in probe.rows():
        lines.append(f"{r['layer']:>5} {r['value']:8.4f} {r['control_mean']:9.4f} "
                     f"{r['control_sd']:8.4f} {r['z']:6.2f} {r['rank']:>4}/{r['out_of']}")
    best = int(b.z.argmax())
    top = nearest_share(probe)
    lines += [
        "",
        f"emb = token-embedding rows; rank = place of {probe.target!r} among "
        f"{b.n + 1} words (1 = nearest).",
        f"Highest z: layer {probe.row_names[best]} (z {b.z[best]:.2f}, rank "
        f"{int(b.rank[best])}/{b.n + 1}).",
        (f"Too few controls ({b.n}) to speak of the nearest 5%: use --controls 19 or more."
         if top is None else
         "Within the nearest 5% of words at: " + (", ".join(top) if top else "no layer") + "."),
    ]
    return "\n".join(lines)


def format_sets(test: baselines.SetTest) -> str:
    r = test.result
    how = "every split" if r.exact else f"{r.n_perm:,} random relabellings"
    lines = [
        "",
        f"Sets: A = {', '.join(test.set_a)}; B = {', '.join(test.set_b)}",
        f"  Is A nearer {test.concept!r} than B? Permutation test ({how}), "
        f"measure {test.measure}; p_any corrects for testing every layer.",
        f"{'layer':>5} {'mean A':>8} {'mean B':>8} {'A - B':>8} {'p':>8} {'p_any':>8}",
    ]
    for i, layer in enumerate(test.layers):
        lines.append(f"{layer:>5} {test.values_a[:, i].mean():8.4f} "
                     f"{test.values_b[:, i].mean():8.4f} {r.observed[i]:8.4f} "
                     f"{r.p[i]:8.4f} {r.p_any[i]:8.4f}")
    return "\n".join(lines)


def _neighbours(model: object, probe: baselines.PairProbe, k: int) -> dict:
    emb = concepts.embedding_vectors(model, [probe.concept], pool=probe.pool)
    vocab = concepts.vocab_neighbours(model, emb.vectors[0], k=k, exclude=emb.words[0].ids)
    row = int(probe.baseline.z[1:].argmax())  # best in-context layer
    reference = np.stack([probe.target_vectors.mean[row], *probe.control_vectors[:, row]])
    context = concepts.context_neighbours(
        probe.concept_vectors.mean[row], reference, [probe.target, *probe.controls.words],
        k=k, center=probe.control_vectors[:, row].mean(axis=0),
    )
    return {"vocab": [(n.label, n.score) for n in vocab],
            "layer": probe.concept_vectors.layers[row],
            "context": [(n.label, n.score) for n in context]}


def run(args: argparse.Namespace) -> int:
    from spyglass.model import ModelLoadError, load_model

    try:
        templates = _templates(args.templates)
        model = load_model(args.model)
        probe = baselines.probe_pair(
            model, args.concept, args.target, n_controls=args.controls, templates=templates,
            concept_contexts=args.context, pool=args.pool, how=args.measure,
            progress=_Bar("probe"), prepend_bos=args.bos,
        )
        sets = None
        if args.sets:
            set_a, set_b = ([w.strip() for w in s.split(",") if w.strip()] for s in args.sets)
            sets = baselines.set_test(model, args.concept, set_a, set_b, templates=templates,
                                      pool=args.pool, how=args.measure,
                                      n_perm=args.permutations, progress=_Bar("sets"),
                                      prepend_bos=args.bos)
        near = _neighbours(model, probe, args.neighbours) if args.neighbours > 0 else None
    except (ModelLoadError, ValueError) as exc:
        print(f"spyglass probe: {exc}", file=sys.stderr)
        return 2

    if args.json:
        out = {"model": model.name, **probe.to_dict(),
               "nearest_5_percent": nearest_share(probe)}
        if sets is not None:
            out["sets"] = {
                "a": list(sets.set_a), "b": list(sets.set_b), "layers": list(sets.layers),
                "mean_a": sets.values_a.mean(axis=0).tolist(),
                "mean_b": sets.values_b.mean(axis=0).tolist(),
                "difference": sets.result.observed.tolist(), "p": sets.result.p.tolist(),
                "p_any": sets.result.p_any.tolist(), "n_perm": sets.result.n_perm,
                "exact": sets.result.exact,
            }
        if near is not None:
            out["neighbours"] = near
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0

    print(f"model: {model.name}")
    print(format_table(probe))
    if sets is not None:
        print(format_sets(sets))
    if near is not None:
        print(f"\nNearest tokens to {probe.concept!r} in the embedding matrix (centred cosine): "
              + ", ".join(f"{label!r} {score:.3f}" for label, score in near["vocab"]))
        print(f"Nearest of {probe.target!r} and controls at layer {near['layer']} (centred "
              "cosine): " + ", ".join(f"{w} {s:.3f}" for w, s in near["context"]))
    return 0
