// The published shape: `npm pack` ships the module, its types, the README and the CHANGELOG, and
// nothing else (no tests, no lockfile); the versions in package.json, VERSION and the CHANGELOG agree.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { PaymentTracker } from "paytrack-client";
import { VERSION } from "../src/index.js";

const PACKAGE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

test("npm pack --dry-run lists exactly the published files", () => {
  const out = execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: PACKAGE, encoding: "utf8" });
  const [packed] = JSON.parse(out);
  const manifest = JSON.parse(readFileSync(path.join(PACKAGE, "package.json"), "utf8"));
  assert.equal(packed.name, "paytrack-react");
  assert.equal(packed.version, manifest.version);
  assert.deepEqual(packed.files.map((f) => f.path).sort(), [
    "CHANGELOG.md",
    "README.md",
    "package.json",
    "src/index.d.ts",
    "src/index.js",
    "src/initiate.js",
    "src/store.js",
  ]);
  assert.deepEqual(manifest.peerDependencies, { react: ">=18" });
  assert.deepEqual(Object.keys(manifest.dependencies), ["paytrack-client"]);
});

test("the version is the same in package.json, VERSION and the CHANGELOG's newest entry", () => {
  const manifest = JSON.parse(readFileSync(path.join(PACKAGE, "package.json"), "utf8"));
  assert.equal(VERSION, manifest.version);
  const changelog = readFileSync(path.join(PACKAGE, "CHANGELOG.md"), "utf8");
  const newest = /^## (\S+)/m.exec(changelog);
  assert.ok(newest, "the CHANGELOG has a version heading");
  assert.equal(newest[1], manifest.version);
});

test("the client it depends on has what usePayByLink and a link paid after its expiry need (paytrack-client 0.4.0 or later)", () => {
  const client = JSON.parse(readFileSync(path.join(PACKAGE, "..", "js", "package.json"), "utf8"));
  const [major, minor] = client.version.split(".").map(Number);
  assert.ok(major > 0 || minor >= 4, `paytrack-client ${client.version}`);
  assert.equal(typeof PaymentTracker.prototype.payByLink, "function");
});
