"""Promotion: a sweep's best LoRA trial into the CatSith registry and the MLflow Model Registry.

* `select`: which trial (the sweep's own ranking; failed, early-stopped or unfinished trials never);
* `lora`: its logged artifacts -> a CatSith package (settings, default registry, slug);
* `model_registry`: one version per promoted run, the `champion` / `previous` aliases;
* `flow`: the two steps together (`promote_choice`);
* `commands`: the CLI (`promote`, `registry list|verify`).

Nothing is imported here, so registering the CLI commands stays cheap (torch and MLflow load on use).
"""
