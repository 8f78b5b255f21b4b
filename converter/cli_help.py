"""``weightport convert --help`` in sections: every option of ``convert`` belongs to one group of
:data:`CONVERT_GROUPS` (a table, so an option added anywhere in :mod:`weightport.cli` only needs one row
here; tests/test_cli_polish.py names any option that has none), followed by three examples.
"""

from __future__ import annotations

import argparse

from weightport.formats import FORMATS, TARGETS

# group title -> what it is about; the order is the order --help shows
GROUP_TITLES: dict[str, str] = {
    "source": "how SRC is read",
    "target": "what is written to DST",
    "validation": "checking the conversion before it is written",
    "raw/java": "plain arrays (--to raw, --to java)",
    "messages": "what is printed, and what is refused instead of warned",
}

# option dest -> group title
CONVERT_GROUPS: dict[str, str] = {
    "assume_backend": "source", "source_semantics": "source", "spec": "source", "fail_on_nonfinite": "source",
    "layer_kinds": "source", "keep_unknown": "source",
    "key": "source", "arch": "source", "input_shape": "source",
    "output": "target", "to": "target", "target_semantics": "target", "rename": "target",
    "strict_against": "target", "template": "target", "force": "target", "max_shard_size": "target",
    "validate": "validation", "input": "validation", "expected": "validation", "atol": "validation",
    "rtol": "validation", "allow_incomplete": "validation", "require_all": "validation", "seed": "validation",
    "samples": "validation",
    "dtype": "raw/java", "byte_order": "raw/java", "layout": "raw/java", "emit_forward": "raw/java",
    "java_package": "raw/java", "java_class": "raw/java",
    "help": "messages", "quiet": "messages", "strict": "messages",
}

CONVERT_EXAMPLES = """\
examples:
  weightport convert model.h5 -o model.safetensors
      Keras HDF5 to a PyTorch state_dict (the target from the extension)
  weightport convert model.h5 -o model.safetensors --validate --input x.npy --expected y.npy
      the same, written only if every layer and the recorded output are reproduced
  weightport convert model.h5 -o project --to java --java-package com.example.model --emit-forward
      a Maven-shaped project: the weights as classpath resources, a Java loader and forward pass"""


def output_help() -> str:
    """``-o DST``: a file or a folder, per target, from the registry."""
    folder_targets = [item.target for item in FORMATS if item.writes and "" in item.extensions]
    file_targets = [item.name for item in TARGETS if item.name not in folder_targets]
    return (f"output: a file for --to {', '.join(file_targets)}; a folder for --to {', '.join(folder_targets)}. "
            "'-' writes a one-file output to stdout (needs --to)")


def ungrouped(parser: argparse.ArgumentParser) -> list[str]:
    """The options of ``parser`` that :data:`CONVERT_GROUPS` does not place (by their flags)."""
    return ["/".join(action.option_strings) for action in parser._actions
            if action.option_strings and action.dest not in CONVERT_GROUPS]


def group_convert_options(parser: argparse.ArgumentParser) -> None:
    """Move every option of ``parser`` into its :data:`CONVERT_GROUPS` section and add the examples.

    An option without a row stays under argparse's plain "options" heading (the CLI still works; the
    test fails naming it)."""
    groups = {title: parser.add_argument_group(f"{title}: {about}") for title, about in GROUP_TITLES.items()}
    for container in list(parser._action_groups):
        if container in groups.values():
            continue
        for action in list(container._group_actions):
            if action.option_strings and action.dest in CONVERT_GROUPS:
                container._group_actions.remove(action)
                groups[CONVERT_GROUPS[action.dest]]._group_actions.append(action)
    parser.epilog = CONVERT_EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
