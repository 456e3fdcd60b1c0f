"""The policy as an MLflow pyfunc model, so a registered version can be loaded and asked for units:

    model = mlflow.pyfunc.load_model("models:/speechalign-demo@champion")
    model.predict([{"text": "Bring the red box.", "speaker": "en-us+m3"}])   # -> [[units...]]

Loading needs speechalign installed (the class below is referenced by its module path).
"""

from __future__ import annotations

import mlflow.pyfunc


class CodecLMModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from speechalign.models.codec_lm import load_codec_lm

        self.lm = load_codec_lm(context.artifacts["policy"])

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
