"""What one job does, by `method.kind`: each entry has `check(cfg)` (raises ConfigError before any
training) and `run(job) -> (metrics, paths)`."""

from compresslab.methods import baseline, compress, distill

RUNNERS = {"baseline": baseline, "compress": compress, "distill": distill}
