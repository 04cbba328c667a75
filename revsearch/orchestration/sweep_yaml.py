"""Reading a sweep file safely: a bounded, regular-file read and a safe YAML parse.

``read_sweep_document(path)`` returns the parsed document (or raises a one-line ``ConfigError``): only
a regular file is read, never more than ``MAX_SWEEP_BYTES``; the YAML is safe-loaded with duplicate
keys rejected, ``1e-4`` read as a float and dates left as strings, and its size with every alias
expanded is bounded before it is built (an alias bomb never gets constructed).
"""
from __future__ import annotations

import os
import re
import stat
from typing import Any, Dict, Union

import yaml

from ..errors import ConfigError

class SweepYamlLoader(yaml.SafeLoader):
    """Safe YAML with duplicate keys rejected, ``1e-4`` read as a float (YAML 1.1 wants ``1.0e-4``) and
    dates left as strings."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


SweepYamlLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SweepYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: a sweep file is a few KB; these bound what reading one may cost (memory and time) whatever it holds
MAX_SWEEP_BYTES = 1 << 20
#: YAML nodes after expanding aliases: ~100 in a real sweep, ~10,000 with the largest choice allowed
MAX_YAML_NODES = 200_000


def expanded_nodes(root: yaml.Node, budget: int) -> int:
    """How many nodes the document has with every alias expanded (an anchor used n times counts n
    times), computed over the shared node graph without expanding it; stops counting past ``budget``.
    Raises ``ValueError`` for a recursive alias (an anchor used inside itself)."""
    done: Dict[int, int] = {}
    open_nodes = set()            # expanded but not finished: exactly the path from the root
    stack = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in done:
            stack.pop()
            continue
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if key not in open_nodes:
            open_nodes.add(key)
            for child in children:
                if id(child) in open_nodes:
                    raise ValueError(f"recursive alias at line {child.start_mark.line + 1}: an anchor is "
                                     f"used inside its own value")
                if id(child) not in done:
                    stack.append(child)
            continue
        open_nodes.discard(key)
        done[key] = min(budget + 1, 1 + sum(done[id(c)] for c in children))
        stack.pop()
    return done[id(root)]


def parse_yaml_text(text: str, source: str) -> Any:
    loader = None
    try:
        loader = SweepYamlLoader(text)   # the reader checks the characters here already
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            count = expanded_nodes(node, MAX_YAML_NODES)
        except ValueError as e:
            raise ConfigError(f"{source}: invalid YAML: {e}") from None
        if count > MAX_YAML_NODES:
            raise ConfigError(f"{source}: invalid YAML: more than {MAX_YAML_NODES:,} values (with every alias "
                              f"*name expanded); a sweep file has a few hundred") from None
        return loader.construct_document(node)
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (e.context, e.problem) if x) or "syntax error"
        raise ConfigError(f"{source}: invalid YAML{where}: {one_line(what)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except Exception as e:  # ReaderError (control characters), constructor ValueErrors, ...
        raise ConfigError(f"{source}: invalid YAML: {one_line(e) or type(e).__name__}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_sweep_document(path: Union[str, os.PathLike]) -> Any:
    """The parsed YAML document of a sweep file (never None: an empty file is an error)."""
    source = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once instead of blocking forever; only a
        # regular file is read, and never more than MAX_SWEEP_BYTES (/dev/zero would fill the memory)
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"{source}: sweep file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, expected a sweep YAML file") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read sweep file: {one_line(e.strerror or e)}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        os.close(fd)
        raise ConfigError(f"{source}: is a directory, expected a sweep YAML file")
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                    else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a regular file")
            raise ConfigError(f"{source}: is {kind}, expected a sweep YAML file (a regular file)")
        try:
            raw = f.read(MAX_SWEEP_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"{source}: cannot read sweep file: {one_line(e.strerror or e)}") from None
    if len(raw) > MAX_SWEEP_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_SWEEP_BYTES // 1024} KiB; a sweep file is a few KB "
                          f"(is this the right file?)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    data = parse_yaml_text(text, source)
    if data is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with at least 'name'")
    return data
