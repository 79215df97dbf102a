from sweepcnn.sweep.runner import cli

if __name__ == "__main__":
    cli()
