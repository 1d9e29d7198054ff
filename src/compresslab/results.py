"""The result record (`result.json`) that every job writes, ok or failed: build, validate, write, read.

One record per job directory. The report, the sweep skipper and the reproductions read nothing else,
so this module is the schema's only definition (the README documents it for people).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from compresslab.files import atomic_write
from compresslab.hashing import json_digest

SCHEMA_VERSION = 1
FILENAME = "result.json"

# Keys of the resolved config that say where things go or how they are shown, not what is computed.
NON_RESULT_KEYS = ("paths", "logger", "hydra", "force", "objective")

REQUIRED = {
    "schema_version": int, "status": str, "error": (str, type(None)), "config_hash": str,
    "overrides": list, "seed": int, "data": str, "model": str, "method": str, "metrics": dict,
    "paths": dict, "versions": dict,
}
# ok: finished; failed: `error` says why; interrupted: stopped from outside (Ctrl-C, SIGTERM, a dead
# launcher) before it finished, which a re-run resumes from its checkpoints.
STATUSES = ("ok", "failed", "interrupted")
REQUIRED_METRICS_OK = ("test_acc", "test_loss", "val_acc", "params_total", "params_nonzero",
                       "size_fp32_bytes", "train_time_s")


class SchemaError(ValueError):
    """A record that does not follow the schema, or follows a newer one than this code knows."""


def config_hash(config: dict) -> str:
    """Hash of the resolved job config without its output paths and display settings."""
    kept = {k: v for k, v in config.items() if k not in NON_RESULT_KEYS}
    return json_digest(kept, 16, compact=True)


def validate(record: dict) -> dict:
    """Return the record if it follows the schema, else raise SchemaError saying what is off."""
    if not isinstance(record, dict):
        raise SchemaError("a result record must be a JSON object")
    version = record.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise SchemaError(f"result schema_version {version} is newer than this compresslab reads "
                          f"({SCHEMA_VERSION}); upgrade compresslab to read it")
    problems = [f"missing key {k!r}" for k in REQUIRED if k not in record]
    problems += [f"{k!r} should be {t}" for k, t in REQUIRED.items()
                 if k in record and not isinstance(record[k], t)]
    if record.get("status") not in STATUSES:
        problems.append(f"status {record.get('status')!r} is not one of {', '.join(STATUSES)}")
    if record.get("status") in ("failed", "interrupted") and not record.get("error"):
        problems.append(f"a {record.get('status')} record needs an error message")
    if record.get("status") == "ok" and isinstance(record.get("metrics"), dict):
        metrics = record["metrics"]
        problems += [f"metrics.{k} missing" for k in REQUIRED_METRICS_OK if k not in metrics]
        acc = metrics.get("test_acc")
        if isinstance(acc, (int, float)) and not 0 <= acc <= 1:
            problems.append(f"metrics.test_acc={acc} is not a fraction in [0, 1]")
    if problems:
        raise SchemaError("; ".join(problems))
    return record


def write(directory: Path, record: dict) -> Path:
    """Validate and write atomically: readers never see half a record."""
    validate(record)
    return atomic_write(Path(directory) / FILENAME,
                        json.dumps(_finite(record), indent=2, sort_keys=False, default=str) + "\n")


def read(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SchemaError(f"{path}: unreadable result record ({e})") from e
    try:
        return validate(record)
    except SchemaError as e:
        raise SchemaError(f"{path}: {e}") from e


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: store them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
