"""Write the list files of ImageNet100, NUS-WIDE or MS-COCO from their official downloads.

    python scripts/prepare_data.py imagenet100 --source /data/ILSVRC2012 --out data/imagenet100
    python scripts/prepare_data.py nuswide --source /data/NUS-WIDE --out data/nuswide
    python scripts/prepare_data.py coco --source /data/coco --out data/coco

Each writes ``<out>/train.txt``, ``test.txt`` (the queries), ``database.txt`` and ``classes.txt``
and prints the split sizes and label statistics; ``python main_v2.py dataset=<name>
data_dir=<parent of out>`` then reads them. The rules, and where each comes from (the reference's
list files, the SDC supplement, the HashNet / DPSH conventions), are in ``datasets/prepare.py``.
The same ``--seed`` always gives the same files; ``--help`` prints the rules and their sources.
Expected sources:

- imagenet100: ImageNet-1k in class folders, ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``
  (torchvision's ImageNet / ImageFolder layout);
- nuswide: ``ImageList/Imagelist.txt`` and ``Groundtruth/AllLabels/Labels_<concept>.txt`` of the
  official NUS-WIDE download, with the images under ``Flickr/<category>/`` (or ``--images``);
- coco: ``annotations/instances_{train,val}{2014|2017}.json`` beside ``train<year>/``, ``val<year>/``.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from datasets import prepare  # noqa: E402
from utils.errors import exit_on_user_error  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    rules = prepare.__doc__[prepare.__doc__.index("Rules and their sources") :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=rules,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{imagenet100,nuswide,coco}")

    def common(p, folder):
        p.add_argument("--source", required=True, help="the official download (see above)")
        p.add_argument("--out", required=True, help=f"output folder, normally <data_dir>/{folder}")
        p.add_argument(
            "--seed",
            type=int,
            default=42,
            help="seed of the random draws (42, the reference's seed)",
        )
        p.add_argument(
            "--no-check-images",
            dest="check_images",
            action="store_false",
            help="only check that the images exist instead of reading every header",
        )

    p = sub.add_parser(
        "imagenet100", help="ImageNet100 from an ImageNet-1k train/val class-folder copy"
    )
    common(p, "imagenet100")
    p.add_argument(
        "--classes",
        default=None,
        help="class list, one wnid per line (default datasets/imagenet100_classes.txt)",
    )
    p.add_argument(
        "--reference-lists",
        default=None,
        help="folder with the reference's train.txt and test.txt: use exactly their images",
    )
    p.add_argument(
        "--train-per-class",
        type=int,
        default=130,
        help="training images per class without reference lists (130, the reference)",
    )

    p = sub.add_parser(
        "nuswide", help="NUS-WIDE (21 concepts) from the official image list and label files"
    )
    common(p, "nuswide")
    p.add_argument(
        "--images", default=None, help="folder holding Flickr/<category>/ (default: --source)"
    )
    p.add_argument(
        "--concepts",
        type=int,
        default=21,
        help="number of most frequent concepts kept (21, the reference)",
    )
    p.add_argument(
        "--queries-per-concept",
        type=int,
        default=100,
        help="100 x 21 = 2,100 queries (the reference)",
    )
    p.add_argument(
        "--train-per-concept",
        type=int,
        default=500,
        help="500 x 21 = 10,500 training images (the reference)",
    )

    p = sub.add_parser(
        "coco", help="MS-COCO from the official instances annotations (2014 or 2017)"
    )
    common(p, "coco")
    p.add_argument(
        "--year",
        choices=("2014", "2017"),
        default=None,
        help="annotation release (default: the one present, 2014 first)",
    )
    p.add_argument("--queries", type=int, default=5000, help="queries (5,000, the reference)")
    p.add_argument(
        "--train", type=int, default=10000, help="training images (10,000, the reference)"
    )
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> prepare.Prepared:
    args = parse_args(argv)
    common = dict(source=args.source, out=args.out, seed=args.seed, check_images=args.check_images)
    if args.dataset == "imagenet100":
        result = prepare.prepare_imagenet100(
            classes=args.classes,
            reference_lists=args.reference_lists,
            train_per_class=args.train_per_class,
            **common,
        )
    elif args.dataset == "nuswide":
        result = prepare.prepare_nuswide(
            images=args.images,
            nconcepts=args.concepts,
            queries_per_concept=args.queries_per_concept,
            train_per_concept=args.train_per_concept,
            **common,
        )
    else:
        result = prepare.prepare_coco(
            year=args.year, n_query=args.queries, n_train=args.train, **common
        )
    print(result.report())
    written = result.write(args.out)
    out = os.path.abspath(args.out)
    folder = os.path.basename(out)
    override = (
        "" if folder == args.dataset else f" dataset.source.folder={folder}"
    )  # configs read <data_dir>/<name>/
    print("wrote " + ", ".join(str(p) for p in written))
    print(
        f"train with: python main_v2.py dataset={args.dataset} data_dir={os.path.dirname(out)}{override}"
    )
    return result


if __name__ == "__main__":
    main()
