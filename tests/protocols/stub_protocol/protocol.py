"""... and its run: the receiver's baseline accuracy on sampled items, nothing more."""

from pathlib import Path

import pandas as pd
import torch

from mi_bridge.core.capture import capture_resid_post
from mi_bridge.core.evaluate import score
from mi_bridge.models.task import sample_items
from mi_bridge.protocols.base import Outcome, Protocol
from mi_bridge.report.result import Result, Table


class StubProtocol(Protocol):
    name = "stub"

    def prepare(self, config, pair, sender_layer, receiver_layer, store):
        return pair, sample_items(pair.language, k=config.k, n_items=config.n_items, seed=config.seed)

    def conditions(self, config):
        return ["baseline"]

    def evaluate(self, prepared, conditions):
        pair, items = prepared
        capture = capture_resid_post(
            pair.receiver, items.placeholder_tokens, layers=[0], positions=[-1], with_answer_logits=True
        )
        return score(capture.answer_logits, items.answer_candidates, items.gold_index).correct

    def summarize(self, config, prepared, evaluated, conditions):
        return {
            "conditions": [{"name": "baseline", "n": len(evaluated), "accuracy": float(evaluated.mean())}]
        }

    def judge(self, results):
        accuracy = results["conditions"][0]["accuracy"]
        table = Table("baseline", ("condition", "accuracy"), [("baseline", f"{accuracy:.3f}")])
        return Result("stub", "a stub has no hypothesis", "untestable here", "a stub", [table], {})

    def header(self, config, pair):
        return {"stub": True}

    def figure(self, results, path: Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.bar(["baseline"], [results["conditions"][0]["accuracy"]])
        fig.savefig(path)
        plt.close(fig)

    def write_artifacts(self, staging: Path, outcome: Outcome):
        (staging / "stub.txt").write_text("written by the stub protocol\n")

    def item_table(self, outcome: Outcome):
        correct = outcome.evaluated
        return pd.DataFrame({"item": torch.arange(len(correct)).numpy(), "correct": correct.numpy()})

    def folder_tag(self, config):
        return "stub"
