"""``python src/train.py [-m hparams_search=tiny_optuna]``: lightning-hydra-template's
train.py in brief: instantiate the data, model, callbacks and trainer from the config, fit,
return the optimized metric."""

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float:
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values() if "_target_" in c]
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks)
    trainer.fit(model=model, datamodule=datamodule)
    return float(trainer.callback_metrics[cfg.optimized_metric])


if __name__ == "__main__":
    main()
