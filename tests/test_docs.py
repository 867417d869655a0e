"""Documentation that cannot drift: every `alexnet` command line in README.md and docs/**/*.md must
parse with the real parser, and every ```python block of README.md must run.

Commands: each fenced block tagged sh, bash, shell, console, plain or text (or untagged) is read as
shell: `$ ` prompts (in a `console` block only the prompted lines are commands), `\\` continuations,
`#` comments, quotes, `&&`/`||`/`;`/`&`/`|` chains and redirections are handled; the arguments after
the word `alexnet` (or `-m alexnet`, `-m alexnet.cli.commands`, e.g. under `python -m` or `torchrun`) go to
`build_parser(argv[0]).parse_args(argv)` as `alexnet.cli.commands.main` does, and a `train` or `experiment`
line's settings must also resolve to a valid config. Paths are placeholders (RUN, SRC, /data/store):
parsing never opens them. A `...` argument stands for arguments left out and is dropped.

Mentions in the text (code spans outside the blocks): `alexnet CMD ...` must parse, though it may
leave out what is required (a run folder); `--flag VALUE` must be a flag of some command (or of
torchrun, scripts/ or bench/) that takes VALUE without leaving it over as a positional argument
(`--seeds N`: an upper-case placeholder may stand for the value). The files the docs name, the
flags they give bench/ and scripts/ programs, and the modules of README's module map must exist.

Markers, an HTML comment on the lines right above a block's opening fence:
- `<!-- not-a-command -->`: the block's lines are not checked (e.g. one that shows a refused command);
- `<!-- no-run: REASON -->`: the ```python block is not run; the reason is required, and the mark is
  for what cannot run offline (ImageNet, a GPU, a download).

Python blocks run in order, each in its own namespace, in a temporary working directory holding
the paths the README names (`FIXTURE_PATHS`), with the names a block uses but does not define given
in `GIVEN`; `CHECKS` then tests what the block's comments claim.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_FOLDERS = ("scripts", "bench", "studies", "tests/faults")  # programs the docs give flags to
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_TAGS = {"", "sh", "bash", "shell", "console", "plain", "text"}
OPERATORS = {"&&", "||", "|", ";", "&", "|&", ";;", "(", ")"}


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    tag: str
    lines: list[str]
    marks: list[str] = field(default_factory=list)  # the HTML comments right above the fence

    def where(self, offset: int = 0) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line + 1 + offset}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with the HTML comments on the lines right above each."""
    blocks, text = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(text):
        m = re.match(r"^( {0,3})(`{3,}|~{3,})\s*([\w+-]*)", text[i])
        if not m:
            i += 1
            continue
        fence, start = m.group(2), i
        marks, j = [], i - 1
        while j >= 0 and (not text[j].strip() or re.fullmatch(r"\s*<!--.*-->\s*", text[j])):
            if text[j].strip():
                marks.insert(0, text[j].strip()[4:-3].strip())
            j -= 1
        i += 1
        body = []
        while i < len(text) and not text[i].strip().startswith(fence[0] * len(fence)):
            body.append(text[i])
            i += 1
        blocks.append(Block(path, start + 1, m.group(3).lower(), body, marks))
        i += 1
    return blocks


BLOCKS = [b for path in DOCS for b in fenced_blocks(path)]


def mark(block: Block, name: str) -> str | None:
    """The text after `name` of the block's `<!-- name ... -->` mark ('' for a bare mark), else None."""
    for m in block.marks:
        if m == name or m.startswith(name + ":") or m.startswith(name + " "):
            return m[len(name):].lstrip(": ").strip()
    return None


# ---------------------------------------------------------------------------------------------------
# Command lines
# ---------------------------------------------------------------------------------------------------

def shell_lines(block: Block) -> list[tuple[int, str]]:
    """(offset in the block, logical line) with continuations joined and `$ ` prompts removed."""
    out, pending, first = [], "", 0
    console = block.tag == "console"
    for k, raw in enumerate(block.lines):
        line = raw.rstrip()
        if not pending:
            first = k
            stripped = line.lstrip()
            if console:
                if not stripped.startswith("$ "):
                    continue  # output
                line = stripped[2:]
            elif stripped.startswith("$ "):
                line = stripped[2:]
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    if pending:
        out.append((first, pending))
    return out


REDIRECT = re.compile(r"(^|\s)(\d*|&)(>>|>|<)(&\d+|\s*[^\s&|;<>]+)")
WRAPPERS = {"nohup": 0, "time": 0, "exec": 0, "sudo": 0, "nice": 0, "env": 0, "ip": 3}  # `ip netns exec NAME`


def segments(line: str) -> list[list[str]]:
    """The simple commands of a shell line: split at operators, comments and redirections removed."""
    lexer = shlex.shlex(REDIRECT.sub(" ", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    parts, current = [], []
    for tok in lexer:
        if tok in OPERATORS:
            parts.append(current)
            current = []
        else:
            current.append(tok)
    parts.append(current)
    return [p for p in parts if p]


def alexnet_argv(tokens: list[str]) -> list[str] | None:
    """The arguments an `alexnet` command receives, or None when the command runs something else:
    `... -m alexnet[.cli] ARGS` anywhere (python -m, torchrun), or `alexnet ARGS` as the command word
    (after VAR=value assignments and wrappers such as nohup or `ip netns exec NAME`)."""
    for k in range(len(tokens) - 1):
        if tokens[k] == "-m" and tokens[k + 1] in ("alexnet", "alexnet.cli", "alexnet.__main__"):
            return [t for t in tokens[k + 2:] if t != "..."]
    k = 0
    while k < len(tokens):
        if re.match(r"^[A-Za-z_]\w*=", tokens[k]):
            k += 1
        elif tokens[k] in WRAPPERS:
            k += 1 + WRAPPERS[tokens[k]]
        else:
            break
    if k < len(tokens) and (tokens[k] == "alexnet" or tokens[k].endswith("/alexnet")):
        return [t for t in tokens[k + 1:] if t != "..."]
    return None


@dataclass
class Command:
    where: str
    text: str
    argv: list[str]
    error: str = ""


MENTIONS_ALEXNET = re.compile(r"(^|[\s;&|(])(\S*/)?alexnet(\s|$)|-m\s+alexnet(\.cli|\.__main__)?(\s|$)")


def documented_commands() -> list[Command]:
    commands: list[Command] = []
    for block in BLOCKS:
        if block.tag not in SHELL_TAGS or mark(block, "not-a-command") is not None:
            continue
        for offset, line in shell_lines(block):
            if not MENTIONS_ALEXNET.search(line):
                continue  # another program, or not shell at all (a plain block's file tree)
            try:
                parts = segments(line)
            except ValueError as e:  # unbalanced quotes: reported by the test of this line
                commands.append(Command(block.where(offset), line.strip(), [], f"not shell: {e}"))
                continue
            for tokens in parts:
                argv = alexnet_argv(tokens)
                if argv is not None:
                    where = block.where(offset)
                    n = sum(c.where.split("#")[0] == where for c in commands)
                    commands.append(Command(where + (f"#{n + 1}" if n else ""), line.strip(), argv))
    return commands


COMMANDS = documented_commands()


def quiet_parse(parser, argv: list[str]):
    """(namespace, None), or (None, argparse's error line) where it refuses argv; --help counts as parsed."""
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv), None
    except SystemExit as e:
        if e.code in (0, None):
            return None, None
        lines = [line for line in err.getvalue().splitlines() if "error:" in line]
        return None, lines[-1] if lines else f"exit {e.code}"


def check_settings(args) -> None:
    """A train or experiment line's settings (flags and --set) must make a valid config; its
    experiment names and base must exist. Argparse takes any --set text and any name: this checks
    what the command would check first."""
    from alexnet.config import VARIANTS, resolve
    from alexnet.cli.flags import setting_overrides

    if args.command == "train":
        resolve(setting_overrides(args))
    elif args.command == "experiment":
        from alexnet.experiments.ablations import EXPERIMENTS, FIG1

        unknown = [n for n in args.names if n not in EXPERIMENTS and n not in (FIG1, "all")]
        assert not unknown, f"no experiment named {unknown}"
        assert args.base in VARIANTS, f"--base {args.base}: no such variant"
        resolve({"variant": args.base}, setting_overrides(args))


def test_the_docs_have_commands():
    # the extractor must keep finding what is there: a parser change that finds nothing would pass all
    readme = [c for c in COMMANDS if c.where.startswith("README.md:")]
    assert len(readme) >= 30 and any(c.where.startswith("docs/") for c in COMMANDS)
    assert {c.argv[0] for c in readme} >= {"train", "eval", "prepare", "demo-data", "experiment", "predict",
                                           "import", "features", "neighbors", "figures", "export", "demo"}
    assert len(INLINE) >= 50 and len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses(cmd):
    """What `alexnet.cli.commands.main` does before it runs anything: build_parser(argv[0]).parse_args(argv)."""
    from alexnet.cli.parser import build_parser

    if cmd.error:
        pytest.fail(f"{cmd.where}: `{cmd.text}`: {cmd.error}", pytrace=False)
    args, error = quiet_parse(build_parser(cmd.argv[0] if cmd.argv else None), cmd.argv)
    if error:
        pytest.fail(f"{cmd.where}: `{cmd.text}` is refused by the parser: {error}", pytrace=False)
    try:
        args is None or check_settings(args)
    except Exception as e:  # ConfigError, or an unknown experiment or base
        pytest.fail(f"{cmd.where}: `{cmd.text}`: {e}", pytrace=False)


def test_marks_are_known_and_no_run_gives_a_reason():
    for block in BLOCKS:
        for m in block.marks:
            name = re.match(r"[\w:-]*", m).group(0).split(":")[0]
            assert name in ("not-a-command", "no-run", "setup"), f"{block.where(-1)}: unknown mark <!-- {m} -->"
        reason = mark(block, "no-run")
        assert reason is None or (block.tag == "python" and reason), \
            f"{block.where(-1)}: <!-- no-run: REASON --> needs a reason and belongs to a python block"


def test_the_readers_handle_the_shell_forms():
    block = Block(ROOT / "README.md", 1, "console", [
        "$ OMP_NUM_THREADS=1 alexnet train --data d \\", "    --lr 0.02   # a comment", "output line",
        "$ pip install -e . && alexnet demo 2>&1 | tee log", "$ torchrun --nproc-per-node 2 -m alexnet.cli train ...",
        "$ python -m alexnet eval 'runs/a b' > out.txt", "$ ip netns exec ns-a alexnet demo-data d &>log &",
        "$ torchrun --rdzv-id alexnet -m torch.distributed.run x.py", "$ pip install 'alexnet[digits]'"])
    found = [alexnet_argv(t) for _, line in shell_lines(block) for t in segments(line)]
    assert [a for a in found if a is not None] == [
        ["train", "--data", "d", "--lr", "0.02"], ["demo"], ["train"], ["eval", "runs/a b"], ["demo-data", "d"]]


def test_marks_are_read_from_the_comments_above_a_block(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n<!-- not-a-command -->\n\n```sh\nalexnet bogus\n```\n<!-- no-run: needs ImageNet -->\n"
                  "```python\nopen('/data/imagenet')\n```\n```console\n$ alexnet demo\nwrote ...\n```\n")
    a, b, c = fenced_blocks(md)
    assert (a.tag, a.line, a.lines, mark(a, "not-a-command"), mark(a, "no-run")) == ("sh", 4, ["alexnet bogus"], "", None)
    assert (b.tag, mark(b, "no-run"), mark(b, "not-a-command")) == ("python", "needs ImageNet", None)
    assert c.marks == [] and shell_lines(c) == [(0, "alexnet demo")]


# ---------------------------------------------------------------------------------------------------
# Paths: the files the docs name exist
# ---------------------------------------------------------------------------------------------------

REPO_PATH = re.compile(r"(?<![\w/.-])((?:src/)?(?:alexnet|bench|scripts|tests|docs|\.ci)/[\w./*-]*\w)")


def named_paths() -> list[tuple[str, str]]:
    """(file:line, path) for every repository path in the docs' text and every relative link."""
    found = []
    for path in DOCS:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{i}"
            found += [(where, m.group(1)) for m in REPO_PATH.finditer(line)]
            found += [(where, str((path.parent / m.group(1)).resolve().relative_to(ROOT)))
                      for m in re.finditer(r"\]\(([^)#\s]+)", line) if not re.match(r"\w+:", m.group(1))]
    return found


def test_the_files_the_docs_name_exist():
    paths = named_paths()
    assert len(paths) > 20
    missing = [f"{where}: {p}" for where, p in paths
               if not any(list(base.glob(p)) for base in (ROOT, ROOT / "src"))]
    assert not missing, "the docs name files that are not there: " + "; ".join(missing)


def test_the_flags_the_docs_give_a_script_are_its_own():
    """`python bench/loader.py [--source photos] --low-quality 75`: each flag is defined in that file."""
    checked, missing = 0, []
    for path in DOCS:
        text = " ".join(path.read_text(encoding="utf-8").split())
        for m in re.finditer(r"((?:bench|scripts|studies|tests/faults)/\w+\.py)((?:\s+\[?--[\w-]+(?:\s+[^\s`\[\]-][^\s`\]]*)?\]?)*)", text):
            source = (ROOT / m.group(1)).read_text(encoding="utf-8")
            for flag in re.findall(r"--[\w-]+", m.group(2)):
                checked += 1
                if f'"{flag}"' not in source:
                    missing.append(f"{path.relative_to(ROOT)}: {m.group(1)} {flag}")
    assert checked > 10 and not missing, missing


def test_the_readmes_module_map_names_modules_that_exist():
    [tree] = [b for b in BLOCKS if b.path.name == "README.md" and b.lines and b.lines[0].strip() == "src/alexnet/"]
    src = ROOT / "src" / "alexnet"
    names = {n for line in tree.lines for n in re.findall(r"[\w*]+\.(?:py|c)\b", line)}
    assert len(names) > 30
    missing = sorted(n for n in names if not list(src.rglob(n)))
    assert not missing, f"README.md:{tree.line}'s module map names modules that are not in src/alexnet: {missing}"


# ---------------------------------------------------------------------------------------------------
# Mentions in the text: `alexnet CMD ...` and `--flag [VALUE]` code spans
# ---------------------------------------------------------------------------------------------------

PLACEHOLDER_FLAGS = {"--section.key"}  # the README's name for every generated flag
PLACEHOLDER_VALUE = re.compile(r"invalid \w+ value: '[A-Z][A-Z_]*'")  # --seeds N, --codes BITS


def inline_spans() -> list[Command]:
    """The code spans outside fenced blocks that show an `alexnet` command or flags (`--x VALUE`)."""
    found: list[Command] = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        # blank out the fenced blocks, keeping the line count
        text = re.sub(r"(?ms)^ {0,3}(`{3,}|~{3,}).*?^ {0,3}\1[`~]*\s*$", lambda m: "\n" * m.group(0).count("\n"), text)
        for m in re.finditer(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)", text):
            span = " ".join(m.group(1).split())
            if not (span.startswith("alexnet ") or span == "alexnet" or span.startswith("--")):
                continue
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}"
            n = sum(c.where.split("#")[0] == where for c in found)
            found.append(Command(where + (f"#{n + 1}" if n else ""), span, []))
    return found


INLINE = inline_spans()


def _parsers(parser, path=()):
    """{(), ("train",), ("import", "caffe"), ...: the parser of that command}."""
    import argparse

    out = {path: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_parsers(sub, (*path, name)))
    return out


@functools.cache
def lenient_parsers():
    """Every command's parser with nothing required: a mention in the text may leave out a run folder."""
    from alexnet.cli.parser import build_parser

    parsers = _parsers(build_parser())
    for p in parsers.values():
        for action in p._actions:
            action.required = False
    return parsers


@functools.cache
def other_programs_flag(flag: str) -> bool:
    """A flag of torchrun or of one of the project's scripts and benchmarks, mentioned beside ours."""
    from torch.distributed.run import get_args_parser

    if flag in get_args_parser()._option_string_actions:
        return True
    return any(f'"{flag}"' in p.read_text(encoding="utf-8") for d in SCRIPT_FOLDERS for p in (ROOT / d).glob("*.py"))


def check_mention(span: str) -> str | None:
    """Why a code span in the text is wrong, or None. A command may leave out what is required (a run
    folder); a flag may be named without its value or with a placeholder (`--seeds N`), but a value
    it shows must be one the flag takes, and must not be left over as a positional argument."""
    parsers = lenient_parsers()
    root = parsers[()]
    if span.startswith("alexnet"):
        for argv in filter(None, (alexnet_argv(t) for t in segments(span))):
            args, error = quiet_parse(root, argv)
            if error:
                return error
            try:
                args is None or check_settings(args)
            except Exception as e:
                return str(e)
        return None
    tokens = shlex.split(span)
    flags = [t.split("=")[0] for t in tokens if t.startswith("--")]
    owners = {flag: [path for path, p in parsers.items() if flag in p._option_string_actions] for flag in flags}
    for flag, paths in owners.items():
        if not paths and flag not in PLACEHOLDER_FLAGS and not other_programs_flag(flag):
            return f"no alexnet command (nor torchrun, nor scripts/ or bench/) has {flag}"
    if all(t.startswith("--") for t in tokens) or not owners[flags[0]]:
        return None  # flag names only, or another program's
    errors = []
    for path in owners[flags[0]]:  # right if right for one of the commands that have the flag
        args, error = quiet_parse(root, [*path, *tokens])
        if error and (error.endswith(" expected one argument") or PLACEHOLDER_VALUE.search(error)):
            return None
        positionals = [a.dest for a in parsers[path]._actions if not a.option_strings and a.dest != "command"]
        taken = [getattr(args, d) for d in positionals if getattr(args, d, None) not in (None, [])] if args else []
        if not error and not taken:
            return None
        errors.append(error or f"alexnet {' '.join(path)}: {taken} would be read as {positionals}")
    return "; ".join(errors)


@pytest.mark.parametrize("cmd", INLINE, ids=[c.where for c in INLINE])
def test_command_or_flag_mentioned_in_the_text_parses(cmd):
    why = check_mention(cmd.text)
    if why:
        pytest.fail(f"{cmd.where}: `{cmd.text}`: {why}", pytrace=False)


# ---------------------------------------------------------------------------------------------------
# Python blocks of README.md
# ---------------------------------------------------------------------------------------------------

PYTHON_BLOCKS = [b for b in BLOCKS if b.path.name == "README.md" and b.path.parent == ROOT and b.tag in ("python", "py")]

# The paths the README's examples open, as the conftest fixtures that provide them (linked into the
# block's working directory under the README's name).
FIXTURE_PATHS = {"demo-store": "demo_store", "runs/paper": "tiny_run", "photos": "readme_photos",
                 "pets": "readme_pets"}


@pytest.fixture
def readme_photos(demo_store, tmp_path_factory):
    """photos/cat.jpg, photos/dog.jpg, photos/more/bird.jpg: demo images of other sizes and shapes."""
    from PIL import Image

    from alexnet.data import ImageStore

    store, root = ImageStore(demo_store, "val"), tmp_path_factory.mktemp("readme") / "photos"
    (root / "more").mkdir(parents=True)
    for name, i, size in (("cat.jpg", 0, (96, 72)), ("dog.jpg", 35, (72, 110)), ("more/bird.jpg", 71, (80, 80))):
        Image.fromarray(store[i][0]).resize(size, Image.Resampling.BICUBIC).save(root / name, quality=95)
    return root


@pytest.fixture
def readme_pets(demo_store, tmp_path_factory):
    """pets/<cat, dog, emu>/0.jpg ... 11.jpg: a plain class-folder tree of three demo classes."""
    from PIL import Image

    from alexnet.data import ImageStore

    store, root = ImageStore(demo_store, "train"), tmp_path_factory.mktemp("readme") / "pets"
    for label, name in enumerate(("cat", "dog", "emu")):
        (root / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(store[label * 100 + i][0]).save(root / name / f"{i}.jpg", quality=95)
    return root


def _given_x():
    import torch

    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255 - 120


# Names a block uses without defining them (the README says what they are), by name: a factory.
GIVEN = {"x": _given_x}


def _check_model(ns):
    from alexnet.model import count_parameters

    assert count_parameters(ns["net"]) == 60_965_224
    assert tuple(ns["logits"].shape) == (2, 1000) and tuple(ns["features"].shape) == (2, 4096)
    assert ns["small"].config.num_classes == 10


def _check_store(ns):
    import numpy as np

    img, label, s = ns["img"], ns["label"], ns["s"]
    assert img.shape == (72, 72, 3) and img.dtype == np.uint8 and isinstance(label, int)
    assert len(s.classes) == len(s.class_names) == 10
    assert s.mean.shape == (72, 72, 3) and s.mean.dtype == np.float32
    assert ns["eigvals"].shape == (3,) and ns["eigvecs"].shape == (3, 3)


def _check_front_door(ns):
    import numpy as np
    import torch

    net, s = ns["net"], ns["net"].config.input_size
    assert ns["x"].shape == (3, s, s) and ns["x10"].shape == (10, 3, s, s) and ns["logits"].shape == (1, 10)
    assert list(ns["feats"]) == ["conv1", "conv5", "fc7"] and all(v.is_contiguous() for v in ns["feats"].values())
    assert (ns["feats"]["conv1"] < 0).any()  # before the ReLU
    assert list(ns["halves"]) == ["conv2.tower0", "conv2.tower1"]
    assert [r["file"].split("photos/")[1] for r in ns["top5"]] == ["cat.jpg", "dog.jpg", "more/bird.jpg"]
    assert ns["top5"][0]["top"][0]["label"] == int(ns["logits"].argmax())  # predict agrees with net(transforms)
    assert ns["arrays"]["fc7"].shape == (3, net.config.fc_width) and ns["arrays"]["conv5"].ndim == 4
    np.testing.assert_allclose(ns["rdm"], 1 - np.corrcoef(ns["arrays"]["fc7"].astype(np.float64)), atol=1e-9)
    with torch.no_grad():
        np.testing.assert_allclose(ns["arrays"]["fc7"][0], net.features(ns["x"][None], "fc7")["fc7"][0].numpy(),
                                   rtol=1e-5, atol=1e-5)


def _check_library_tasks(ns):
    import torch

    result, tuned = ns["result"], ns["tuned"]
    assert result["n"] == 100 and len(result["per_class"]) == 10 and 0 <= result["top1_err"] <= 1
    assert tuned.classes == ["cat", "dog", "emu"] and torch.equal(tuned.input_mean, ns["net"].input_mean)


# What a block's comments claim, keyed by a line of the block: each key must match exactly one block.
CHECKS = {"net = AlexNet()": _check_model, 's = ImageStore("demo-store", "train")': _check_store,
          'x = net.transforms()("photos/cat.jpg")': _check_front_door,
          'result = alexnet.evaluate(net, "demo-store", views=10)': _check_library_tasks}


def test_every_check_has_its_block():
    for key in CHECKS:
        n = sum(any(line.strip().startswith(key) for line in b.lines) for b in PYTHON_BLOCKS)
        assert n == 1, f"CHECKS[{key!r}] matches {n} python blocks of README.md"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.where(-1) for b in PYTHON_BLOCKS])
def test_readme_python_block_runs(block, request, tmp_path, monkeypatch):
    reason = mark(block, "no-run")
    if reason:
        pytest.skip(f"no-run: {reason}")
    source = "\n".join(block.lines)
    for name, fixture in FIXTURE_PATHS.items():
        if re.search(rf"['\"]{re.escape(name)}['\"/]", source):
            target = tmp_path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(request.getfixturevalue(fixture), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME"):  # alexnet.configure()
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])  # put back after the block
        else:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the suite keeps its own thread count
    ns: dict = {"__name__": "__readme__"}
    for name, make in GIVEN.items():
        if re.search(rf"\b{name}\b", source):
            ns[name] = make()
    code = compile("\n" * block.line + source, str(block.path), "exec")  # tracebacks name README.md's lines
    exec(code, ns)  # noqa: S102 - the README's own example
    for key, check in CHECKS.items():
        if any(line.strip().startswith(key) for line in block.lines):
            check(ns)
