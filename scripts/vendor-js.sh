#!/usr/bin/env bash
# Vendor the demo page's JavaScript into adserve/server/static/ (committed, so
# `make run` needs no npm): Plotly's prebuilt cartesian bundle (contours, lines,
# arrows), a minified ES-module bundle of the CodeMirror 6 parts the page uses
# (built with esbuild), and a copy of the JS client from clients/js/; and, for
# /docs and /redoc to work offline, Swagger UI's and ReDoc's prebuilt bundles
# (`--docs-only` vendors just those).
# npm runs in a throw-away directory; only the minified files and licenses stay.
# Versions are pinned: change them here, run this script, commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
static=adserve/server/static
vendor=$static/vendor

client_only=0
[ "${1:-}" = "--client-only" ] && client_only=1
docs_only=0
[ "${1:-}" = "--docs-only" ] && docs_only=1

# the JS client is written in clients/js/ and served from the package (a test checks they match)
cp clients/js/adserve.js "$static/adserve.js"
[ $client_only -eq 1 ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Swagger UI (/docs) and ReDoc (/redoc), served from static/vendor/docs/ instead of FastAPI's default CDN.
# Their npm packages ship self-contained browser bundles: `npm pack` fetches just each package's tarball,
# none of the dependencies the bundles already contain (their notices are in the *.LICENSE.txt kept).
vendor_docs() {
    local docs=$vendor/docs
    mkdir -p "$docs" "$work/docs"
    (cd "$work/docs" && npm pack --silent swagger-ui-dist@5.35.0 redoc@2.5.4 >/dev/null)
    tar -xzf "$work"/docs/swagger-ui-dist-*.tgz -C "$work/docs" && mv "$work/docs/package" "$work/docs/swagger-ui"
    tar -xzf "$work"/docs/redoc-*.tgz -C "$work/docs" && mv "$work/docs/package" "$work/docs/redoc"
    # without their sourceMappingURL: the maps are not shipped, and a browser's dev tools would ask for them
    sed '/^\/\/# sourceMappingURL=/d' "$work/docs/swagger-ui/swagger-ui-bundle.js" >"$docs/swagger-ui-bundle.js"
    sed '/^\/\*# sourceMappingURL=/d' "$work/docs/swagger-ui/swagger-ui.css" >"$docs/swagger-ui.css"
    # ReDoc draws its sidebar's "API docs by Redocly" logo from cdn.redoc.ly, the one request either page makes
    # to another host: pointed at nothing (the image then hides itself; the link stays)
    sed -e '/^\/\/# sourceMappingURL=/d' -e 's#"https://cdn.redoc.ly/redoc/logo-mini.svg"#"data:,"#' \
        "$work/docs/redoc/bundles/redoc.standalone.js" >"$docs/redoc.standalone.js"
    if grep -q 'cdn.redoc.ly' "$docs/redoc.standalone.js"; then
        echo "redoc.standalone.js still loads from cdn.redoc.ly: update the sed above" >&2
        exit 1
    fi
    cp "$work/docs/swagger-ui/favicon-32x32.png" "$docs/favicon-32x32.png"
    {
        echo "Swagger UI and ReDoc, vendored by scripts/vendor-js.sh; each is under the license below."
        for pkg in swagger-ui redoc; do
            echo
            echo "==== $(node -p "require('$work/docs/$pkg/package.json').name") $(node -p "require('$work/docs/$pkg/package.json').version") ===="
            cat "$work/docs/$pkg"/LICENSE*
        done
        echo
        echo "==== third-party code in swagger-ui-bundle.js ===="
        cat "$work/docs/swagger-ui/swagger-ui-bundle.js.LICENSE.txt"
        echo
        echo "==== third-party code in redoc.standalone.js ===="
        cat "$work/docs/redoc/bundles/redoc.standalone.js.LICENSE.txt"
    } >"$docs/LICENSES.txt"
    ls -l "$docs"
}

if [ $docs_only -eq 1 ]; then
    vendor_docs
    exit 0
fi

cat >"$work/package.json" <<'EOF'
{
  "private": true,
  "dependencies": {
    "plotly.js-cartesian-dist-min": "4.1.1",
    "@codemirror/view": "6.43.15",
    "@codemirror/state": "6.7.6",
    "@codemirror/commands": "6.11.1",
    "@codemirror/language": "6.13.1",
    "@codemirror/lang-python": "6.2.1",
    "@codemirror/lint": "6.9.8",
    "esbuild": "0.28.2"
  }
}
EOF

# the names the page imports from vendor/codemirror.js
cat >"$work/codemirror-entry.js" <<'EOF'
export {EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter, drawSelection} from "@codemirror/view";
export {EditorState, Compartment} from "@codemirror/state";
export {history, defaultKeymap, historyKeymap, indentWithTab} from "@codemirror/commands";
export {syntaxHighlighting, defaultHighlightStyle, bracketMatching, indentOnInput, indentUnit} from "@codemirror/language";
export {pythonLanguage} from "@codemirror/lang-python";
export {linter, setDiagnostics, lintGutter} from "@codemirror/lint";
EOF

(cd "$work" && npm install --silent --no-audit --no-fund >/dev/null)
mkdir -p "$vendor"
cp "$work/node_modules/plotly.js-cartesian-dist-min/plotly-cartesian.min.js" "$vendor/plotly-cartesian.min.js"
"$work/node_modules/.bin/esbuild" "$work/codemirror-entry.js" --bundle --minify --format=esm \
    --legal-comments=none --log-level=warning --outfile="$vendor/codemirror.min.js"

{
    echo "Third-party code vendored by scripts/vendor-js.sh; each is under the license below."
    # every package that ends up in a bundle: all installed ones but the bundler
    for dir in "$work"/node_modules/*/ "$work"/node_modules/@*/*/; do
        [ -f "${dir}package.json" ] || continue  # a scope folder such as @codemirror/
        pkg=${dir#"$work"/node_modules/}
        pkg=${pkg%/}
        case $pkg in esbuild | @esbuild/*) continue ;; esac
        version=$(node -p "require('${dir}package.json').version")
        echo
        echo "==== $pkg $version ===="
        cat "$dir"LICENSE* 2>/dev/null || echo "(license: $(node -p "require('${dir}package.json').license"))"
    done
} >"$vendor/LICENSES.txt"

vendor_docs
ls -l "$vendor"
