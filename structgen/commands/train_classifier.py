import argparse

NAME = "train-classifier"
HELP = "train the small ResNet that judges generated images (purity, classifier-Fréchet distance)"


def add_arguments(p) -> None:
    p.add_argument("--dataset", "-d", required=True, help="digits, mnist, fmnist, cifar10 or synthetic")
    p.add_argument("--data-dir", help="folder holding the dataset folders")
    p.add_argument("--epochs", type=int, help="training epochs (default: per dataset, enough for the "
                   "accuracy targets: mnist 2, fmnist 4, cifar10 20, digits 15)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random-crop (and, for cifar10, flip) the training images (default: cifar10 only)")
    p.add_argument("--degrade", action="store_true",
                   help="also blur and haze training images, so blurry generations (TreeVAE samples) are "
                        "judged by their shapes; save it beside the default, e.g. --out runs/classifiers/mnist-degrade.pt")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batch order and augmentation")
    p.add_argument("--out", help="checkpoint file (default: runs/classifiers/<dataset>.pt)")


def run(args) -> int:
    from structgen.config import ConfigError
    from structgen.scoring.classifier import train_classifier

    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    path, acc = train_classifier(args.dataset, args.data_dir, epochs=args.epochs, batch_size=args.batch_size,
                                 seed=args.seed, out=args.out, augment=args.augment, degrade=args.degrade)
    print(f"classifier: {path}  test accuracy {acc:.4f}")
    return 0
