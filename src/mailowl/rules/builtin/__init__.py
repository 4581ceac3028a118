"""Every built-in rule, one module each; importing this package registers them."""

from mailowl.rules.builtin import (  # noqa: F401
    archive,
    clamav,
    expressions,
    file_larger_than,
    file_type_lists,
    final_rule,
    known,
    office_macro,
    pe,
    yara,
)
