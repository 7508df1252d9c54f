"""The replication base's pretraining text (`dvc repro corpus`): plain-text files, one text a line.

- wikitext-2 valid + test (heading lines dropped),
- the AG News *train* split's title + description (never a validation row),
- the SQuAD (MRQA dev) contexts.
Reads the shared data by path (docs/replication.md); writes OUTPUT/*.txt atomically.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
from pathlib import Path

from softprompt.io import atomic_dir


def wikitext_lines(directory: Path) -> list[str]:
    lines = []
    for name in ("valid.txt", "test.txt"):
        for line in (directory / name).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.strip().startswith("="):
                lines.append(line.strip())
    return lines


def ag_news_lines(train_csv: Path) -> list[str]:
    with train_csv.open(encoding="utf-8", newline="") as f:
        return [f"{title} {description}".replace("\n", " ") for _, title, description in csv.reader(f)]


def squad_contexts(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = (json.loads(line) for line in f if line.strip())
        return [row["context"].replace("\n", " ") for row in rows if "context" in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="the shared data directory (../shared/data)")
    parser.add_argument("--ag-news", type=Path, required=True, help="the AG News split (softprompt split)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    texts = {"wikitext2.txt": wikitext_lines(args.shared / "text" / "wikitext-2"),
             "ag_news_train.txt": ag_news_lines(args.ag_news / "train.csv"),
             "squad_contexts.txt": squad_contexts(args.shared / "mrqa" / "SQuAD.jsonl.gz")}
    with atomic_dir(args.output) as tmp:
        for name, lines in texts.items():
            (tmp / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.output}: " + ", ".join(f"{k} {len(v)} texts" for k, v in texts.items()))


if __name__ == "__main__":
    main()
