#!/usr/bin/env python
"""Build the tiny Qwen3-VL embedder and the PEARL-shaped fixture the `vdr_smoke` recipe uses.

    python scripts/build_vdr_model.py [MODEL_DIR] [FIXTURE_DIR]

Defaults: .cache/tiny/vdr_embedder and .cache/fixtures/pearl. A stamp skips an unchanged rebuild.
"""

import sys

from ain_testkit.pearl_fixture import write_pearl_fixture
from ain_testkit.tiny_vdr_embedder import ensure_tiny_vdr_embedder

if __name__ == "__main__":
    model = sys.argv[1] if len(sys.argv) > 1 else ".cache/tiny/vdr_embedder"
    fixture = sys.argv[2] if len(sys.argv) > 2 else ".cache/fixtures/pearl"
    print(ensure_tiny_vdr_embedder(model))
    print(write_pearl_fixture(fixture))
