// The "Submit a job" form: the params fields are generated from the chosen type's JSON Schema
// (GET /api/job-types/), the job is sent with POST /api/jobs/, and the API's field errors
// (problem details: errors[].field like "params.seconds") are shown next to their fields.

import { api, h, problemText } from "./common.js";

function schemaType(schema) {
  const type = schema.type;
  if (Array.isArray(type)) return type.find((t) => t !== "null") || "string";
  if (type) return type;
  if (Array.isArray(schema.enum)) return "string";
  return "json";
}

function humanize(name) {
  const text = name.replace(/[_-]+/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export class JobForm {
  /**
   * @param {HTMLFormElement} form  the form (see templates/tasks_app/dashboard.html)
   * @param {{typesUrl: string, jobsUrl: string, onCreated?: (job: object) => void, doneText?: string}} options
   *   jobsUrl is where the body is POSTed; a subclass may add fields to `collect()` (the schedule form).
   */
  constructor(form, { typesUrl, jobsUrl, onCreated = () => {}, doneText = "Submitted" }) {
    this.form = form;
    this.typesUrl = typesUrl;
    this.jobsUrl = jobsUrl;
    this.onCreated = onCreated;
    this.doneText = doneText;
    this.types = new Map();
    this.body = form.querySelector("[data-form-body]");
    this.typeSelect = form.querySelector("select[name=type]");
    this.typeHelp = form.querySelector("[data-type-description]");
    this.params = form.querySelector("[data-params]");
    this.priority = form.querySelector("input[name=priority]");
    this.formError = form.querySelector("[data-form-error]");
    this.status = form.querySelector("[data-form-status]");
    this.submitButton = form.querySelector("button[type=submit]");
    this.busy = false;
    this.typeSelect.addEventListener("change", () => this.renderParams());
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
  }

  async load() {
    let result;
    try {
      result = await api(this.typesUrl);
    } catch {
      result = null;
    }
    if (!result || !result.ok || !Array.isArray(result.data)) {
      this.showFormError(`Could not load the job types: ${problemText(result)}`);
      return;
    }
    const previous = this.typeSelect.value;
    this.types = new Map(result.data.map((type) => [type.name, type]));
    this.typeSelect.replaceChildren(...result.data.map((type) => h("option", { value: type.name }, type.name)));
    if (this.types.has(previous)) this.typeSelect.value = previous;
    this.renderParams();
    this.body.disabled = false;
  }

  renderParams() {
    const type = this.types.get(this.typeSelect.value);
    this.clearErrors();
    this.typeHelp.textContent = type ? type.description || "" : "";
    const legend = this.params.querySelector("legend");
    const schema = (type && type.params_schema) || {};
    const properties = schema.properties || {};
    const required = new Set(schema.required || []);
    const names = Object.keys(properties);
    const grid = h("div", { class: "params-grid" });
    for (const name of names) grid.append(this.fieldFor(name, properties[name], required.has(name)));
    this.params.replaceChildren(
      legend,
      names.length ? grid : h("p", { class: "muted small" }, "This type takes no parameters."),
    );
  }

  /** One field for a property of the params schema. */
  fieldFor(name, schema, required) {
    const path = `params.${name}`;
    const id = `param-${name}`;
    const errorId = `error-${path.replace(/\W/g, "-")}`;
    const hintId = `${id}-help`;
    const type = schemaType(schema);
    const label = schema.title || humanize(name);
    const hintParts = [];
    if (schema.description) hintParts.push(schema.description);
    let control;
    const common = {
      id, name: path, "data-param": name, "data-kind": type, "data-testid": `param-${name}`,
      "aria-describedby": `${hintId} ${errorId}`, required: required || undefined,
    };

    if (type === "boolean") {
      control = h("input", { ...common, type: "checkbox", checked: schema.default === true });
      const wrapper = h("div", { class: "field" },
        h("label", { class: "check", for: id }, control, label),
        h("p", { class: "hint", id: hintId }, hintParts.join(" ")),
        h("p", { class: "field-error", id: errorId, "data-error-for": path, hidden: true }),
      );
      return wrapper;
    }
    if (type === "number" || type === "integer") {
      const min = schema.minimum ?? (schema.exclusiveMinimum !== undefined ? schema.exclusiveMinimum : undefined);
      const max = schema.maximum ?? (schema.exclusiveMaximum !== undefined ? schema.exclusiveMaximum : undefined);
      const step = schema.multipleOf ?? (type === "integer" ? 1 : "any");
      control = h("input", {
        ...common, type: "number", step: String(step), inputmode: type === "integer" ? "numeric" : "decimal",
        min: min !== undefined ? String(min) : undefined, max: max !== undefined ? String(max) : undefined,
        value: schema.default !== undefined ? String(schema.default) : undefined,
      });
      if (min !== undefined && max !== undefined) hintParts.push(`${min.toLocaleString()} to ${max.toLocaleString()}.`);
      else if (min !== undefined) hintParts.push(`At least ${min.toLocaleString()}.`);
      else if (max !== undefined) hintParts.push(`At most ${max.toLocaleString()}.`);
    } else if (type === "string" && Array.isArray(schema.enum)) {
      control = h("select", common, ...schema.enum.map((value) => h("option", { value: String(value) }, String(value))));
      if (schema.default !== undefined) control.value = String(schema.default);
    } else if (type === "string") {
      control = h("input", {
        ...common, type: "text", value: schema.default !== undefined ? String(schema.default) : undefined,
        maxlength: schema.maxLength !== undefined ? String(schema.maxLength) : undefined,
        minlength: schema.minLength !== undefined ? String(schema.minLength) : undefined,
      });
    } else {
      // Objects, arrays and anything else: JSON text.
      control = h("textarea", { ...common, "data-kind": "json", rows: 3 },
        schema.default !== undefined ? JSON.stringify(schema.default) : "");
      hintParts.push("JSON.");
    }
    return h("div", { class: "field" },
      h("label", { for: id }, label, required ? h("span", { "aria-hidden": "true" }, " *") : null),
      control,
      h("p", { class: "hint", id: hintId }, hintParts.join(" ")),
      h("p", { class: "field-error", id: errorId, "data-error-for": path, hidden: true }),
    );
  }

  /** The request body, or null after showing client-side errors (input that isn't a value). */
  collect() {
    const params = {};
    const errors = [];
    for (const control of this.params.querySelectorAll("[data-param]")) {
      const name = control.dataset.param;
      const kind = control.dataset.kind;
      const path = `params.${name}`;
      if (kind === "boolean") {
        params[name] = control.checked;
      } else if (kind === "number" || kind === "integer") {
        if (control.validity.badInput) errors.push({ field: path, message: "Enter a number." });
        else if (control.value.trim() !== "") params[name] = Number(control.value);
      } else if (kind === "json") {
        if (control.value.trim() !== "") {
          try { params[name] = JSON.parse(control.value); } catch { errors.push({ field: path, message: "Enter valid JSON." }); }
        }
      } else if (control.value !== "" || control.required) {
        params[name] = control.value;
      }
    }
    const body = { type: this.typeSelect.value, params };
    if (this.priority.validity.badInput) {
      errors.push({ field: "priority", message: `Enter a whole number from ${this.priority.min} to ${this.priority.max}.` });
    }
    else if (this.priority.value.trim() !== "") body.priority = Number(this.priority.value);
    if (errors.length) {
      this.showErrors(errors);
      return null;
    }
    return body;
  }

  async submit() {
    if (this.busy) return;
    this.clearErrors();
    const body = this.collect();
    if (!body) return;
    this.busy = true;
    this.submitButton.disabled = true;
    this.setStatus("Submitting…");
    let result;
    try {
      result = await api(this.jobsUrl, { method: "POST", body });
    } catch {
      result = null;
    } finally {
      this.busy = false;
      this.submitButton.disabled = false;
    }
    if (result && result.ok && result.data && result.data.id) {
      const job = result.data;
      this.setStatus("", true);
      this.status.append(`${this.doneText} `, h("a", { href: this.onCreated(job) || "#", "data-testid": "submitted-link" },
        h("code", {}, job.name || job.id.slice(0, 8))), ".");
      return;
    }
    this.setStatus("");
    const errors = result && result.data && Array.isArray(result.data.errors) ? result.data.errors : [];
    if (errors.length) this.showErrors(errors);
    else this.showFormError(result ? problemText(result) : "Could not reach the server; try again.");
  }

  setStatus(text, ok = false) {
    this.status.textContent = text;
    this.status.classList.toggle("ok", ok);
  }

  clearErrors() {
    for (const el of this.form.querySelectorAll("[data-error-for]")) {
      el.hidden = true;
      el.textContent = "";
    }
    for (const el of this.form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    this.formError.hidden = true;
    this.formError.replaceChildren();
  }

  /** Show problem-details errors: each next to its field, the rest above the button. */
  showErrors(errors) {
    const unplaced = [];
    let first = null;
    for (const error of errors) {
      const field = error.field || "";
      const slot = field ? this.form.querySelector(`[data-error-for="${CSS.escape(field)}"]`) : null;
      if (!slot) {
        unplaced.push(field ? `${field}: ${error.message}` : error.message);
        continue;
      }
      slot.hidden = false;
      slot.textContent = slot.textContent ? `${slot.textContent} ${error.message}` : error.message;
      const control = this.form.querySelector(`[name="${CSS.escape(field)}"]`);
      if (control) {
        control.setAttribute("aria-invalid", "true");
        first = first || control;
      }
    }
    if (unplaced.length) this.showFormError(unplaced);
    if (first) first.focus();
  }

  showFormError(messages) {
    const list = Array.isArray(messages) ? messages : [messages];
    this.formError.replaceChildren(...list.map((message) => h("p", {}, message)));
    this.formError.hidden = false;
  }
}
