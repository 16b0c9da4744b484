"""Scrapes a Prometheus endpoint and parses it with the Prometheus project's own Python parser
for the OpenMetrics text format (strict: types, `_total` names, the closing `# EOF`).

Usage: parse_metrics.py URL. Prints one JSON list of samples ({"name", "labels", "value",
"type"}); exits non-zero when the text does not parse.
"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200, answer.status
        kind = answer.headers.get("Content-Type", "")
        assert kind.startswith("application/openmetrics-text"), kind
        text = answer.read().decode("utf-8")
    samples = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.append({"name": s.name, "labels": s.labels, "value": s.value,
                            "type": family.type})
    print(json.dumps(samples))


if __name__ == "__main__":
    main(sys.argv[1])
