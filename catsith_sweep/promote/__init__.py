"""Promotion: a sweep's best LoRA trial into the CatSith registry and the MLflow Model Registry.

* `select`: which sweep and trial (the newest finished sweep and its own ranking; failed, early-stopped
  or unfinished trials never);
* `lora`: its logged artifacts -> a CatSith package (settings, default registry, slug);
* `vae`: a SpriteVAE trial's ONNX export -> a CatSith models folder;
* `flow`: the LoRA steps together (`promote_choice`). The MLflow Model Registry side (one version per
  promoted run, the `champion` / `previous` aliases) is `tracking.model_registry`;
* `commands`: the CLI (`promote`, `registry list|verify`).

Nothing is imported here, so registering the CLI commands stays cheap (torch and MLflow load on use).
"""
