#!/usr/bin/env bash
# Vendor the demo page's JavaScript into adserve/server/static/ (committed, so
# `make run` needs no npm): Plotly's prebuilt cartesian bundle (contours, lines,
# arrows), a minified ES-module bundle of the CodeMirror 6 parts the page uses
# (built with esbuild), and a copy of the JS client from clients/js/.
# npm runs in a throw-away directory; only the minified files and licenses stay.
# Versions are pinned: change them here, run this script, commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
static=adserve/server/static
vendor=$static/vendor

client_only=0
[ "${1:-}" = "--client-only" ] && client_only=1

# the JS client is written in clients/js/ and served from the package (a test checks they match)
cp clients/js/adserve.js "$static/adserve.js"
[ $client_only -eq 1 ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

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

ls -l "$vendor"
