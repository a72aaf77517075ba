// Starts Swagger UI on /docs (a separate file: the page's policy allows no inline script).
// The schema URL is relative, so it stays right behind a path prefix; validatorUrl null keeps the
// page from asking a public validator about the schema.
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
  });
});
