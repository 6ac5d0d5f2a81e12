"""The one class map: label name <-> contiguous id 1..K (0 is background).

Training, evaluation and export all read the same saved ``classes.json``, so a deployed
model can never order its classes differently from the one that was trained.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

BACKGROUND_ID = 0


class ClassMap:
    def __init__(self, names: Sequence[str]):
        names = [str(n) for n in names]
        if not names:
            raise ValueError("a class map needs at least one class")
        seen = set()
        for name in names:
            if not name.strip():
                raise ValueError(f"class names must be non-empty strings, got {name!r}")
            if name in seen:
                raise ValueError(f"class {name!r} is listed twice")
            seen.add(name)
        self.names: tuple[str, ...] = tuple(names)
        self._ids = {name: i + 1 for i, name in enumerate(self.names)}

    @classmethod
    def from_labels(cls, labels: Iterable[str], classes: Sequence[str] | None = None) -> "ClassMap":
        """``classes=None`` discovers every label, sorted; an explicit list keeps its order."""
        if classes is not None:
            return cls(list(classes))
        found = sorted(set(labels))
        if not found:
            raise ValueError("no labels found to build a class map from (and no explicit `classes` given)")
        return cls(found)

    @property
    def num_classes(self) -> int:
        """Number of foreground classes K (ids are 1..K)."""
        return len(self.names)

    def id_of(self, name: str) -> int:
        return self._ids[name]

    def name_of(self, class_id: int) -> str:
        if not 1 <= int(class_id) <= len(self.names):
            raise KeyError(f"class id {class_id} is outside 1..{len(self.names)}")
        return self.names[int(class_id) - 1]

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassMap) and self.names == other.names

    def __repr__(self) -> str:
        return f"ClassMap({list(self.names)!r})"

    def to_dict(self) -> dict:
        return {"background_id": BACKGROUND_ID, "names": list(self.names),
                "ids": {name: i for name, i in self._ids.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "ClassMap":
        return cls(data["names"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ClassMap":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
