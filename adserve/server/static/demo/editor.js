/**
 * CodeMirror 6 (vendored bundle) for the function's text and the generated code:
 * Python highlighting, line numbers, and the server's errors shown as
 * diagnostics at their line and column.
 */

import {
  EditorState, EditorView, bracketMatching, defaultHighlightStyle, defaultKeymap, drawSelection, highlightActiveLine,
  highlightActiveLineGutter, history, historyKeymap, indentOnInput, indentUnit, indentWithTab, keymap, lineNumbers,
  lintGutter, pythonLanguage, setDiagnostics, syntaxHighlighting,
} from "../vendor/codemirror.min.js";

const theme = EditorView.theme({
  "&": {fontSize: "14px", backgroundColor: "#fff"},
  ".cm-content": {fontFamily: "var(--mono)", padding: "6px 0"},
  ".cm-gutters": {backgroundColor: "#f8fafc", borderRight: "1px solid #e2e8f0", color: "#94a3b8"},
  ".cm-activeLine": {backgroundColor: "#f1f5f9"},
  ".cm-activeLineGutter": {backgroundColor: "#e2e8f0"},
  "&.cm-focused": {outline: "none"},
  ".cm-scroller": {fontFamily: "var(--mono)", lineHeight: "1.55"},
});

/** An editable editor in `parent`; `onRun` is called on Ctrl/Cmd+Enter, `onChange` on edits. */
export function codeEditor(parent, {doc = "", onRun, onChange} = {}) {
  const run = [{key: "Mod-Enter", run: () => { onRun?.(); return true; }}];
  return new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        lineNumbers(), highlightActiveLineGutter(), highlightActiveLine(), drawSelection(), history(),
        indentOnInput(), bracketMatching(), indentUnit.of("    "), pythonLanguage,
        syntaxHighlighting(defaultHighlightStyle), lintGutter(), EditorView.lineWrapping, theme,
        keymap.of([...run, indentWithTab, ...defaultKeymap, ...historyKeymap]),
        EditorView.updateListener.of((u) => { if (u.docChanged) onChange?.(); }),
        EditorView.contentAttributes.of({"aria-label": "function source"}),
      ],
    }),
  });
}

const VIEW_EXTENSIONS = [lineNumbers(), pythonLanguage, syntaxHighlighting(defaultHighlightStyle), theme,
                         EditorState.readOnly.of(true), EditorView.editable.of(false),
                         EditorView.contentAttributes.of({"aria-label": "generated source"})];

/** A read-only code view (the generated derivative source). */
export function codeView(parent) {
  return new EditorView({parent, state: EditorState.create({doc: "", extensions: VIEW_EXTENSIONS})});
}

/**
 * Show `text` in a code view, scrolled (the view's own scroller, never the page) to the first line
 * holding `needle`. A new state, so nothing of the previous text's scroll position is carried over.
 */
export function showCode(view, text, needle) {
  view.setState(EditorState.create({doc: text, extensions: VIEW_EXTENSIONS}));
  const at = needle ? text.indexOf(needle) : -1;
  if (at < 0) return;
  // heights of lines not drawn yet are estimates until drawn: place, draw, then place again
  const place = () => view.requestMeasure({read: () => view.lineBlockAt(at).top,
                                           write: (top) => { view.scrollDOM.scrollTop = top; }});
  place();
  requestAnimationFrame(() => requestAnimationFrame(place));
}

export function getText(view) {
  return view.state.doc.toString();
}

export function setText(view, text) {
  view.dispatch({changes: {from: 0, to: view.state.doc.length, insert: text}});
}

/**
 * Mark the server's error at `location` = {line, column} (1-based); clear marks when `message` is null.
 * The mark covers the word at that place, or one character.
 */
export function markError(view, location, message) {
  if (!message || !location || !location.line) {
    view.dispatch(setDiagnostics(view.state, []));
    return;
  }
  const doc = view.state.doc;
  const line = doc.line(Math.min(Math.max(1, location.line), doc.lines));
  const from = Math.min(line.from + Math.max(0, (location.column || 1) - 1), line.to);
  const word = /^\w+/.exec(doc.sliceString(from, line.to));
  const to = Math.min(from + (word ? word[0].length : 1), doc.length);
  view.dispatch(setDiagnostics(view.state, [{from, to, severity: "error", message}]));
}
