"""The doctor's report: a short markdown text to paste into a bug report, the same content as JSON, and the
exit verdict (0 when the default path of `run` works here, 1 otherwise)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

REPORT_FORMAT = 1


@dataclass
class Report:
    environment: object  # doctor.environment.Environment
    weights: list  # doctor.verdicts.Verdict per folder
    engines: object | None  # doctor.verdicts.Verdict
    paths: list  # doctor.paths.PathResult
    memory: list[tuple[str, str]]  # (status, line) per decoder
    memory_estimates: list = field(default_factory=list)  # doctor.memory.RunMemory
    stream: str = ""  # what the synthetic stream was
    seconds: float = 0.0

    # ---- verdict ----
    @property
    def default_path(self):
        return next((p for p in self.paths if p.default), None)

    def problems(self) -> list[str]:
        """Why the default path of `run` does not work here (empty: it does)."""
        problems = [f"{p.name} is missing ({p.install})" for p in self.environment.packages if p.status == "failed"]
        problems += [v.line() for v in self.weights if v.status == "failed"]
        default = self.default_path
        if default is None:
            problems.append("no default path was run")
        elif default.status != "ok":
            problems.append(default.line())
        return problems

    @property
    def exit_code(self) -> int:
        return 0 if not self.problems() else 1

    def verdict(self) -> str:
        default = self.default_path
        if not self.problems():
            return f"the default path of `run` works here ({default.name})"
        return "the default path of `run` does NOT work here: " + "; ".join(self.problems())

    # ---- output ----
    def markdown(self) -> str:
        env = self.environment
        lines = ["# personalive-trt doctor", "", f"**Verdict:** {self.verdict()} (exit {self.exit_code}).", "",
                 "## Machine", f"- {env.os}, Python {env.python}", f"- {env.torch_line()}"]
        if env.gpus:
            lines += [f"- {g.line()}" for g in env.gpus]
        driver = env.driver or env.driver_error or "none"
        lines.append(f"- NVIDIA driver: {driver}; CUDA runtime (torch's): {env.torch_cuda or 'none'}")
        lines += [f"- {p.line()}" for p in env.packages]
        cameras = [c.line() for c in env.cameras] or ["none found"]
        lines.append("- cameras: " + "; ".join(cameras))
        lines += ["", "## Weights and engines", *(f"- [{v.status}] {v.line()}" for v in self.weights)]
        if self.engines is not None:
            lines.append(f"- [{self.engines.status}] {self.engines.line()}")
        lines += ["", f"## Paths ({self.stream})", *(f"- {p.line()}" for p in self.paths)]
        lines += ["", "## Memory (estimates from shapes and parameter counts; not yet measured on a GPU)",
                  *(f"- [{status}] {line}" for status, line in self.memory)]
        lines += ["", f"_{self.seconds:.0f} s; `personalive-trt doctor --json FILE` writes the same as JSON._"]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        return {"format": REPORT_FORMAT, "exit_code": self.exit_code, "verdict": self.verdict(),
                "problems": self.problems(), "environment": self.environment.as_dict(),
                "weights": [v.as_dict() for v in self.weights],
                "engines": None if self.engines is None else self.engines.as_dict(),
                "stream": self.stream, "paths": [p.as_dict() for p in self.paths],
                "memory": {"lines": [{"status": s, "line": line} for s, line in self.memory],
                           "estimates": [e.as_dict() for e in self.memory_estimates]},
                "seconds": round(self.seconds, 1)}

    def write_json(self, path: str | Path) -> None:
        from personalive_trt.engines.cache import atomic_write

        atomic_write(Path(path), (json.dumps(self.as_dict(), indent=2) + "\n").encode())


__all__ = ["REPORT_FORMAT", "Report"]
