"""Build hook: compile the gettext catalogs (replicator/locale/*/LC_MESSAGES/*.po) to .mo
files in the built package, so a wheel or `pip install .` ships them compiled. Everything
else is in pyproject.toml. An editable install compiles nothing: replicator.i18n compiles a
.po in memory when its .mo is missing or older (see docs/i18n.md)."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithCatalogs(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        from babel.messages.mofile import write_mo
        from babel.messages.pofile import read_po

        for po in sorted(Path("replicator", "locale").glob("*/LC_MESSAGES/*.po")):
            mo = Path(self.build_lib, po.with_suffix(".mo"))
            mo.parent.mkdir(parents=True, exist_ok=True)
            with po.open("rb") as fh:
                catalog = read_po(fh)
            with mo.open("wb") as fh:
                write_mo(fh, catalog)  # fuzzy entries left out, as msgfmt does
            self.announce(f"compiled {po} -> {mo}", level=2)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            for po in sorted(Path("replicator", "locale").glob("*/LC_MESSAGES/*.po")):
                outputs.append(str(Path(self.build_lib, po.with_suffix(".mo"))))
        return outputs


setup(cmdclass={"build_py": BuildPyWithCatalogs})
