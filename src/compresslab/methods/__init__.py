"""What one job does, by `method.kind`: each entry has `check(cfg)` (raises ConfigError before any
training) and `steps(job)`, a generator of training and evaluation requests
(compresslab.steps) that returns (metrics, paths)."""

from compresslab.methods import baseline, compress, distill

RUNNERS = {"baseline": baseline, "compress": compress, "distill": distill}
