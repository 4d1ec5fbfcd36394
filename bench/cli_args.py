"""The benches' ``key=value`` command line, written once: each value takes its default's type."""

from __future__ import annotations


def key_values(argv: list[str], defaults: dict, hidden: tuple[str, ...] = ()) -> tuple[dict, set[str]]:
    """``defaults`` updated from ``argv``, and the keys given; an unknown key ends the bench
    with one line naming the known ones (but ``hidden``, the bench's own internal keys)."""
    args, given = dict(defaults), set()
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in args:
            raise SystemExit(f"unknown argument {key!r}; known: {', '.join(k for k in args if k not in hidden)}")
        default = defaults[key]
        args[key] = type(default)(value) if not isinstance(default, str) else value
        given.add(key)
    return args, given
