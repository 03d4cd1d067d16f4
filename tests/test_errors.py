"""The error contract: every error medstack raises is a MedstackError child that also subclasses a built-in."""

import inspect
import re
from pathlib import Path

import medstack.errors as errors

PACKAGE = Path(errors.__file__).parent


def test_every_error_class_has_a_builtin_parent():
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.MedstackError) and cls is not errors.MedstackError:
            builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (object, BaseException,
                                                                                        Exception)]  # fmt: skip
            assert builtin, f"{name} subclasses no built-in exception"


def test_no_raise_uses_the_bare_base_class():
    bare = []
    for path in PACKAGE.rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"raise\s+MedstackError\(", line):
                bare.append(f"{path.relative_to(PACKAGE)}:{n}")
    assert not bare, "raise the MedstackError child that fits (ValueError / OSError parent): " + ", ".join(bare)
