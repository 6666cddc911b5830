"""One-time preparation: ``python -m spyglass.model.setup``.

Dequantizes the embedded model into the cache and places GPT-2's BPE files. Both steps are
skipped when their results are already complete on disk.
"""

from __future__ import annotations

import logging
import time

from spyglass.model import embedded, gpt2_bpe

log = logging.getLogger("spyglass.setup")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    folder = embedded.prepare()
    log.info("Embedded model ready: %s", folder)
    log.info("GPT-2 BPE files ready: %s", gpt2_bpe.fetch_files())
    log.info("Set-up took %.1f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
