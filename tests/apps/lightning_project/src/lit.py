"""A LightningModule and a LightningDataModule: linear regression on a tensor file."""

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset, random_split


class TinyDataModule(pl.LightningDataModule):
    def __init__(self, path: str, batch_size: int = 16):
        super().__init__()
        self.path, self.batch_size = path, batch_size

    def setup(self, stage=None):
        data = torch.load(self.path)
        full = TensorDataset(data["x"], data["y"])
        n_val = len(full) // 4
        self.train, self.val = random_split(full, [len(full) - n_val, n_val], generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=64)


class TinyRegressor(pl.LightningModule):
    def __init__(self, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, _):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.net(x).squeeze(-1), y), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
