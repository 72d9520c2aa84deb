// Renders the TeX that pymdownx.arithmatex wraps in <span class="arithmatex">\( ... \)</span> and
// <div class="arithmatex">\[ ... \]</div>, with the KaTeX copy in assets/katex (no network).
// `document$` is Material's page observable (it also fires after instant navigation).
document$.subscribe(({ body }) => {
  for (const element of body.querySelectorAll(".arithmatex")) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\[", right: "\\]", display: true },
        { left: "\\(", right: "\\)", display: false },
      ],
      throwOnError: false,
    });
  }
});
