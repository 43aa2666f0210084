"""The package's command-line tools: one way to define flags, one error line."""

import importlib
import os
import pathlib
import subprocess
import sys
import textwrap

from absl import flags
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# Every program, by module name under alexnet_jax: main, and tools/*.
TOOLS = sorted(
    '.'.join(path.relative_to(REPO / 'alexnet_jax').with_suffix('').parts)
    for path in (REPO / 'alexnet_jax').rglob('*.py')
    if "if __name__ == '__main__':" in path.read_text())


def test_the_tools_are_found():
  assert {'main', 'tools.convert', 'tools.cost', 'tools.plan',
          'tools.predict', 'tools.report', 'tools.visualize'} <= set(TOOLS)
  assert all(tool == 'main' or tool.startswith('tools.') for tool in TOOLS)


def test_every_tool_runs_through_cli_run():
  for tool in TOOLS:
    source = (REPO / 'alexnet_jax' / f'{tool.replace(".", "/")}.py'
              ).read_text()
    block = source[source.index("if __name__ == '__main__':"):]
    assert block.split('\n', 1)[1].strip().startswith(
        'cli.run(main, define_flags'), tool


def test_all_tools_import_together_and_define_their_own_flags():
  modules = [importlib.import_module(f'alexnet_jax.{tool}') for tool in TOOLS]
  for tool, module in zip(TOOLS, modules):
    before = set(flags.FLAGS)
    try:
      holders = module.define_flags()
      defined = set(flags.FLAGS) - before
      key_flags = {f.name for f in flags.FLAGS.get_key_flags_for_module(
          module.__name__)}
    finally:
      for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)
    assert set(holders) == defined, tool
    assert defined <= key_flags, tool  # What --helpshort lists.
    assert all(holder.name == name for name, holder in holders.items()), tool


def _run_tool(tmp_path, body: str, *args: str) -> subprocess.CompletedProcess:
  """A tool whose main is `body`, run through `cli.run` with `args`."""
  script = tmp_path / 'tool.py'
  script.write_text(textwrap.dedent('''
      from absl import flags
      from alexnet_jax import cli

      def define_flags():
        return {'name': flags.DEFINE_string('name', None, 'A name.')}

      def main(argv, flag):
      ''') + textwrap.indent(textwrap.dedent(body), '  ') + textwrap.dedent('''
      if __name__ == '__main__':
        cli.run(main, define_flags, required=['name'])
      '''))
  return subprocess.run(
      [sys.executable, str(script), *args], cwd=tmp_path,
      env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
      text=True, check=False)


@pytest.mark.parametrize('raised', [
    "ValueError(f'--name: {flag[\"name\"].value} is taken')",
    "FileNotFoundError(f'--name: {flag[\"name\"].value} is taken')"])
def test_an_expected_error_is_one_line(tmp_path, raised):
  result = _run_tool(tmp_path, f'raise {raised}', '--name=x')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == ['error: --name: x is taken']


def test_an_unexpected_error_keeps_its_traceback(tmp_path):
  result = _run_tool(tmp_path, "raise KeyError('bug')", '--name=x')
  assert result.returncode == 1
  assert 'Traceback' in result.stderr and "KeyError: 'bug'" in result.stderr


def test_a_required_flag_is_required(tmp_path):
  result = _run_tool(tmp_path, "print('ran')")
  assert result.returncode == 1
  assert 'ran' not in result.stdout
  assert '--name' in result.stderr
