from sweepcnn.report.run_report import cli

if __name__ == "__main__":
    cli()
