"""A few Prometheus metrics, kept in the process and written in the text exposition format."""

from __future__ import annotations

import threading
from collections import defaultdict


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.tasks: dict[str, int] = defaultdict(int)
        self.embedding_cache: dict[str, int] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(route, status)] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def count_tasks(self, outcome: str, count: int = 1) -> None:
        with self.lock:
            self.tasks[outcome] += count

    def render(self, gauges: dict[str, list[tuple[dict, float]]]) -> str:
        lines = [
            "# HELP camsam_requests_total HTTP requests by route and status.",
            "# TYPE camsam_requests_total counter",
        ]
        with self.lock:
            for (route, status), value in sorted(self.requests.items()):
                lines.append(f'camsam_requests_total{{route="{route}",status="{status}"}} {value}')
            lines += [
                "# HELP camsam_request_seconds Time spent answering requests.",
                "# TYPE camsam_request_seconds summary",
            ]
            for route in sorted(self.latency_count):
                lines.append(
                    f'camsam_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}'
                )
                lines.append(
                    f'camsam_request_seconds_count{{route="{route}"}} {self.latency_count[route]}'
                )
            lines += [
                "# HELP camsam_tasks_total Tasks predicted, by outcome.",
                "# TYPE camsam_tasks_total counter",
            ]
            for outcome, value in sorted(self.tasks.items()):
                lines.append(f'camsam_tasks_total{{outcome="{outcome}"}} {value}')
        for name, samples in gauges.items():
            lines.append(f"# TYPE {name} gauge")
            for labels, value in samples:
                text = ",".join(f'{k}="{v}"' for k, v in labels.items())
                lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")
        return "\n".join(lines) + "\n"
