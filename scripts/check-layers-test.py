#!/usr/bin/env python3
"""Tests of scripts/check-layers.py: tiny crates written to a temp dir, the
script run on them as `make layers` runs it, its exit code and lines checked.

`make layers` (part of `make test`) runs this before the check itself, so a
change that stops the script from seeing a circle fails here, not silently.
"""

import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "check-layers.py"


class CheckLayers(unittest.TestCase):
    def crate(self, files: dict) -> Path:
        """A `src/` holding `files` (path -> Rust code); removed after the test."""
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        src = Path(tmp.name) / "src"
        for path, code in files.items():
            file = src / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(textwrap.dedent(code))
        return src

    def check(self, src: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args, str(src)],
            capture_output=True,
            text=True,
            check=False,
        )

    def assert_clean(self, src: Path) -> None:
        run = self.check(src)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("no import circles in 1 crates", run.stdout)
        self.assertNotIn("import circle between", run.stdout)

    def test_two_modules_that_import_each_other_are_a_circle(self):
        src = self.crate({
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::Thing;\npub struct Other;\n",
            "b.rs": "use crate::a::Other;\npub struct Thing;\n",
        })
        run = self.check(src)
        self.assertEqual(run.returncode, 1, run.stdout)
        self.assertIn(f"{src}: import circle between modules: a, b", run.stdout)
        self.assertIn("  a -> b: Thing", run.stdout)
        self.assertIn("  b -> a: Other", run.stdout)
        self.assertNotIn("no import circles", run.stdout)

    def test_a_circle_through_three_modules_names_all_three(self):
        src = self.crate({
            "lib.rs": "mod a;\nmod b;\nmod c;\n",
            "a.rs": "use crate::b;\n",
            "b.rs": "fn f() { crate::c::go(); }\n",
            "c.rs": "use crate::{a::A, plan::Plan};\n",
        })
        run = self.check(src)
        self.assertEqual(run.returncode, 1, run.stdout)
        self.assertIn("import circle between modules: a, b, c", run.stdout)
        self.assertIn("  b -> c: go", run.stdout)
        self.assertIn("  c -> a: A", run.stdout)

    def test_one_way_imports_pass(self):
        src = self.crate({
            "lib.rs": "mod a;\nmod b;\nmod c;\npub use a::A;\n",
            "a.rs": "use crate::{b::B, c::C};\npub struct A;\n",
            "b.rs": "use super::c::C;\npub struct B;\n",
            "c.rs": "pub struct C;\n",
        })
        self.assert_clean(src)

    def test_layers_are_printed_bottom_up(self):
        src = self.crate({
            "lib.rs": "mod a;\nmod b;\nmod c;\n",
            "a.rs": "use crate::b::B;\n",
            "b.rs": "use crate::c::C;\n",
            "c.rs": "pub struct C;\n",
        })
        run = self.check(src, "--layers")
        self.assertEqual(run.returncode, 0, run.stdout)
        self.assertIn("  1. c\n  2. b\n  3. a\n", run.stdout)

    def test_unit_tests_and_comments_may_point_back(self):
        src = self.crate({
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": "use crate::b::B;\n",
            "b.rs": """\
                // crate::a::A would close a circle, but this is a comment
                /* and so is crate::a::A here */
                pub struct B;
                const S: &str = "crate::a::A";

                #[cfg(test)]
                mod tests {
                    use crate::a::A;
                }
                """,
        })
        self.assert_clean(src)

    def test_folders_that_import_each_other_are_a_circle(self):
        # No two files import each other, but folder `x` uses `y` and `y`
        # uses `x`: the layers are tangled.
        src = self.crate({
            "lib.rs": "mod x;\nmod y;\n",
            "x/mod.rs": "mod a;\nmod c;\n",
            "x/a.rs": "use crate::y::b::B;\n",
            "x/c.rs": "pub struct C;\n",
            "y/mod.rs": "pub mod b;\n",
            "y/b.rs": "use crate::x::c::C;\npub struct B;\n",
        })
        run = self.check(src)
        self.assertEqual(run.returncode, 1, run.stdout)
        self.assertNotIn("between modules", run.stdout)
        self.assertIn("import circle between folders: x, y", run.stdout)

    def test_super_in_a_mod_file_is_the_parent_of_its_folder(self):
        src = self.crate({
            "lib.rs": "mod x;\nmod y;\n",
            "x/mod.rs": "use super::y::Y;\npub struct X;\n",
            "y.rs": "use crate::x::X;\npub struct Y;\n",
        })
        run = self.check(src)
        self.assertEqual(run.returncode, 1, run.stdout)
        self.assertIn("import circle between modules: x, y", run.stdout)

    def test_super_in_a_file_is_its_folder(self):
        # x/a.rs is `x::a`: its `super` is `x`, so `super::c` is `x::c`.
        src = self.crate({
            "lib.rs": "mod x;\n",
            "x/mod.rs": "mod a;\nmod c;\n",
            "x/a.rs": "use super::c::C;\npub struct A;\n",
            "x/c.rs": "pub struct C;\nfn f() -> super::a::A { todo!() }\n",
        })
        run = self.check(src)
        self.assertEqual(run.returncode, 1, run.stdout)
        self.assertIn("import circle between modules: x::a, x::c", run.stdout)
        self.assertIn("  x::c -> x::a: A", run.stdout)

    def test_literals_that_look_like_comments_or_quotes_hide_no_code(self):
        # `//` in a string is no comment, `'"'` opens no string, a lifetime
        # is no character: the `use` after each is code.
        for tricky in (
            'const URL: &str = "http://localhost/";',
            "const QUOTE: u8 = b'\"';",
            'const RAW: &str = r#"a "quoted" // raw string"#;',
            "fn f<'a>(s: &'a str) -> char { '\\'' }",
        ):
            with self.subTest(tricky):
                src = self.crate({
                    "lib.rs": "mod a;\nmod b;\n",
                    "a.rs": f'{tricky}\nuse crate::b::B;\nconst END: &str = "end";\n',
                    "b.rs": "use crate::a::A;\npub struct B;\n",
                })
                run = self.check(src)
                self.assertEqual(run.returncode, 1, run.stdout)
                self.assertIn("  a -> b: B", run.stdout)

    def test_code_after_a_unit_test_module_counts(self):
        src = self.crate({
            "lib.rs": "mod a;\nmod b;\n",
            "a.rs": """\
                #[cfg(test)]
                mod tests {
                    use crate::b::Fine;
                }

                use crate::b::B;
                """,
            "b.rs": "use crate::a::A;\npub struct B;\n",
        })
        run = self.check(src)
        self.assertEqual(run.returncode, 1, run.stdout)
        self.assertIn("  a -> b: B\n", run.stdout)

    def test_visibility_names_no_dependency(self):
        src = self.crate({
            "lib.rs": "mod x;\n",
            "x/mod.rs": "mod a;\npub use self::a::f;\n",
            "x/a.rs": "pub(super) fn f() {}\npub(in crate::x) fn g() {}\n",
        })
        self.assert_clean(src)


if __name__ == "__main__":
    unittest.main()
