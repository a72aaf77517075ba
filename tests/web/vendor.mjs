// Copies the browser libraries the playground and the API docs (/docs: Swagger UI) use from
// node_modules into src/dsocr/static/vendor/, with their licences, so the package ships them and
// needs no build step or CDN at install time or in the browser.
// Run after changing a version in package.json: `npm ci && npm run vendor`.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const vendor = join(root, "src", "dsocr", "static", "vendor");
mkdirSync(vendor, { recursive: true });

// Source maps are not shipped; drop the comment so browsers do not ask for them.
function copyScript(from, to) {
  const text = readFileSync(join(root, "node_modules", from), "utf8").replace(/\n\/\/# sourceMappingURL=.*\s*$/, "\n");
  writeFileSync(join(vendor, to), text);
}

function copyStyle(from, to) {
  const text = readFileSync(join(root, "node_modules", from), "utf8").replace(/\s*\/\*# sourceMappingURL=.*\*\/\s*$/, "\n");
  writeFileSync(join(vendor, to), text);
}

copyScript("marked/lib/marked.esm.js", "marked.esm.js");
copyFileSync(join(root, "node_modules", "marked", "LICENSE"), join(vendor, "marked.LICENSE.txt"));
copyScript("dompurify/dist/purify.min.js", "purify.min.js");
copyFileSync(join(root, "node_modules", "dompurify", "LICENSE"), join(vendor, "dompurify.LICENSE.txt"));

// Swagger UI for /docs: the bundle (React and the rest inside, their licences in the .LICENSE.txt),
// its styles, and the project's licence and notice (Apache-2.0).
const swagger = join(vendor, "swagger-ui");
mkdirSync(swagger, { recursive: true });
copyScript("swagger-ui-dist/swagger-ui-bundle.js", join("swagger-ui", "swagger-ui-bundle.js"));
copyStyle("swagger-ui-dist/swagger-ui.css", join("swagger-ui", "swagger-ui.css"));
for (const name of ["LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"]) {
  copyFileSync(join(root, "node_modules", "swagger-ui-dist", name), join(swagger, name));
}
