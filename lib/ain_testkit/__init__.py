"""Test scaffolding, kept out of the product: tiny models built from a fixed seed and fixture
writers shaped like the real datasets. Scripts (`scripts/build_*`), tests and benchmarks import
it; nothing under `lib/ain` does, so a run's code snapshot (`run/code/<digest>/ain`) holds only
the product."""
