"""The fleet file: the replicas of one model and the front door before them, as ``tritune serve --replicas N``
writes it and ``tritune orchestrate --fleet FILE`` reads it. One owner for its schema.

Each replica is addressed directly (gRPC for the model-repository API, which the front door refuses, and its
/metrics); the front door's endpoints are the public ones, its metrics URL the end-to-end latency histogram.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tritune.errors import ConfigError

FLEET_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ReplicaEndpoints:
    name: str
    grpc_url: str  # host:port, direct (the orchestrator's model-repository calls)
    metrics_url: str  # http://host:port/metrics
    http_url: str | None = None  # host:port


@dataclass(frozen=True)
class FrontDoorEndpoints:
    http_url: str
    grpc_url: str
    metrics_url: str  # the request-duration histogram


@dataclass(frozen=True)
class FleetFile:
    replicas: tuple[ReplicaEndpoints, ...]
    front_door: FrontDoorEndpoints | None = None
    model: str = "cnn"
    cores_per_replica: int | None = None  # the CPU cores each replica may use, when they share one machine
    schema: int = FLEET_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["replicas"] = [asdict(r) for r in self.replicas]
        return out

    def write(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)  # a reader never sees half a file
        return path

    @classmethod
    def read(cls, path: Path | str) -> FleetFile:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"fleet file {path} does not exist; `tritune serve --replicas N` writes one") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"fleet file {path} is not valid JSON ({exc}); rewrite it or let serve do it") from exc
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Any, where: str = "fleet file") -> FleetFile:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"{where}: {what}; see docs/fleet.md for the format")

        if not isinstance(data, dict):
            raise bad("the top level must be an object")
        if data.get("schema", FLEET_SCHEMA_VERSION) != FLEET_SCHEMA_VERSION:
            raise bad(f"schema {data.get('schema')!r} is not {FLEET_SCHEMA_VERSION}")
        raw = data.get("replicas")
        if not isinstance(raw, list) or not raw:
            raise bad("'replicas' must be a non-empty list")
        replicas = []
        for i, r in enumerate(raw):
            if not isinstance(r, dict):
                raise bad(f"replica {i} must be an object")
            missing = [k for k in ("grpc_url", "metrics_url") if not isinstance(r.get(k), str) or not r.get(k)]
            if missing:
                raise bad(f"replica {i} lacks {', '.join(missing)}")
            replicas.append(
                ReplicaEndpoints(
                    name=str(r.get("name") or f"replica-{i}"),
                    grpc_url=r["grpc_url"],
                    metrics_url=r["metrics_url"],
                    http_url=r.get("http_url"),
                )
            )
        names = [r.name for r in replicas]
        if len(set(names)) != len(names):
            raise bad(f"replica names repeat: {names}")
        fd = data.get("front_door")
        front_door = None
        if fd is not None:
            keys = ("http_url", "grpc_url", "metrics_url")
            if not isinstance(fd, dict) or not all(isinstance(fd.get(k), str) for k in keys):
                raise bad("'front_door' needs http_url, grpc_url and metrics_url")
            front_door = FrontDoorEndpoints(fd["http_url"], fd["grpc_url"], fd["metrics_url"])
        cores = data.get("cores_per_replica")
        if cores is not None and (not isinstance(cores, int) or cores < 1):
            raise bad(f"'cores_per_replica' must be a positive integer, got {cores!r}")
        return cls(
            replicas=tuple(replicas),
            front_door=front_door,
            model=str(data.get("model", "cnn")),
            cores_per_replica=cores,
        )


def parse_replica(spec: str, index: int = 0) -> ReplicaEndpoints:
    """``GRPC_URL,METRICS_URL`` (``--replica``), e.g. ``127.0.0.1:8001,http://127.0.0.1:8002/metrics``."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) != 2 or not all(parts) or "://" in parts[0] or not parts[1].startswith(("http://", "https://")):
        raise ConfigError(
            f"--replica {spec!r} is not GRPC_URL,METRICS_URL (e.g. 127.0.0.1:8001,http://127.0.0.1:8002/metrics)"
        )
    return ReplicaEndpoints(name=f"replica-{index}", grpc_url=parts[0], metrics_url=parts[1])
