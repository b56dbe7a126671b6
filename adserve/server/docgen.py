"""docs/rest.md's table of error codes, generated from `schemas.ERRORS` (which the OpenAPI document's
`ErrorCode` is written from too), as adserve.engine.docgen generates the language and graph references.

    python -m adserve.server.docgen          # rewrite the table
    python -m adserve.server.docgen --check  # exit 1 if it differs from what ERRORS says
"""

import sys

from adserve.engine import docgen

from . import schemas

PARTS = {"errors": schemas.errors_table}
FILES = ("rest.md",)


def render(text: str) -> str:
    return docgen.render(text, PARTS)


if __name__ == "__main__":
    sys.exit(docgen.main(sys.argv[1:], FILES, PARTS, "adserve.server.schemas.ERRORS", "adserve.server.docgen"))
