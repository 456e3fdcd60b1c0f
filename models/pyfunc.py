"""The policy as an MLflow pyfunc model, so a registered version can be loaded and asked for units:

    model = mlflow.pyfunc.load_model("models:/speechalign-demo@champion")
    model.predict([{"text": "Bring the red box.", "speaker": "en-us+m3"}])   # -> [[units...]]

A version holds no weights, only its lineage (its model config): the campaign's base model, by path, and the LoRA
adapters of rounds 1..r, by their runs' artifact URIs. Loading merges them into the base model in order, as the
rounds did (a round's policy is the one before with its adapter merged in). Loading needs speechalign installed
(the class below is referenced by its module path) and the base model at its path.
"""

from __future__ import annotations

import mlflow.artifacts
import mlflow.pyfunc


class CodecLMModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from speechalign.models.precision import decide_precision
        from speechalign.runtime.policies import merged_lineage

        lineage = context.model_config
        self.lm = merged_lineage(lineage["base_model"], [mlflow.artifacts.download_artifacts(uri)
                                                          for uri in lineage["adapters"]],
                                 decide_precision(lineage.get("dtype", "auto")))

    def predict(self, context, model_input: list[dict[str, str]], params: dict | None = None) -> list[list[int]]:
        """One unit sequence per {"text", "speaker"?} row: greedy by default; params {"do_sample": true, "seed": n}
        (row i sampled with seed n + i)."""
        from speechalign.models.sampling import Sampling, generate_units

        params = params or {}
        prompts = [self.lm.prompt(r["text"], r.get("speaker")) for r in model_input]
        sampling = Sampling(do_sample=bool(params.get("do_sample", False)),
                            max_new_tokens=int(params.get("max_new_tokens", 300)))
        seed = int(params.get("seed", 0))
        return [g.units for g in generate_units(self.lm, prompts, sampling, [seed + i for i in range(len(prompts))])]
