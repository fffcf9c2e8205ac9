NAME = "export-tree"
HELP = "write a trained run's tree as tree.json and Newick (tree.nwk) for dendrogram viewers and scipy/ete"


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    p.add_argument("--out", metavar="DIR", help="folder for tree.json and tree.nwk (default: the run folder)")


def run(args) -> int:
    from structgen.api import export_tree

    json_path, newick_path = export_tree(args.run, args.out)
    print(f"{json_path}\n{newick_path}\n{newick_path.read_text().strip()}")
    return 0
