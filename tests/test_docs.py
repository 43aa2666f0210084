"""The documentation: a README that fits on a front page, and links that
lead somewhere in the repository."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')


def _pages() -> list[pathlib.Path]:
  return [REPO / 'README.md', *sorted((REPO / 'docs').rglob('*.md'))]


def test_the_readme_is_a_front_page():
  assert len((REPO / 'README.md').read_text().splitlines()) <= 300


def test_every_link_resolves_to_a_file_in_the_repository():
  for page in _pages():
    for target in LINK.findall(page.read_text()):
      if re.match(r'[a-z]+://|mailto:|#', target):
        continue
      path = (page.parent / target.split('#')[0]).resolve()
      assert path.exists(), f'{page.relative_to(REPO)}: {target}'
      assert REPO in path.parents, f'{page.relative_to(REPO)}: {target}'


# "(docs/data.md, "ImageNet")" or "(see README, "Quick start")" in code and
# docs: a section cited by its heading or its bold lead-in.
SECTION = re.compile(r'\((?:see )?(README|docs/[\w/.-]+\.md), '
                     r'"?([A-Z][^")]*?)"?[,;)]')


def test_every_cited_section_exists():
  cited = 0
  for path in [*_pages(), *(REPO / 'alexnet_jax').rglob('*.py'),
               *(REPO / 'configs').rglob('*.py')]:
    text = re.sub(r"'\s*\n\s*'|\s*\n\s*", ' ', path.read_text())
    for page, section in SECTION.findall(text):
      target = REPO / ('README.md' if page == 'README' else page)
      lines = target.read_text().splitlines()
      assert any(re.match(rf'#+ {re.escape(section)}|\*\*'
                          rf'{re.escape(section)}', line) for line in lines), (
                              f'{path.relative_to(REPO)}: {page}, {section}')
      cited += 1
  assert cited >= 8


def test_no_page_cites_a_document_the_repository_lacks():
  for path in [*_pages(), *(REPO / 'alexnet_jax').rglob('*.py'),
               *(REPO / 'configs').rglob('*.py')]:
    text = path.read_text()
    assert 'SPEC.md' not in text and 'DESIGN.md' not in text, path
