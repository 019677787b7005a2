"""Print the wall time of each notebook (summed over its nbval cells) and of the unit tests, from JUnit XML."""
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def main(path: str) -> None:
    totals: dict[str, float] = defaultdict(float)
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("classname", "") or case.get("file", "")
        key = name.split("::")[0]
        if ".ipynb" in key or "notebooks" in key:
            key = "notebook " + key.replace("notebooks.", "")
        else:
            key = "unit tests"
        totals[key] += float(case.get("time", 0))
    print("\nTime per notebook / suite (s):")
    for key, seconds in sorted(totals.items()):
        print(f"  {key:60s} {seconds:7.1f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "build/junit.xml")
