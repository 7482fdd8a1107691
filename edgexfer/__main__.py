"""``python -m edgexfer``: the same CLI, so ``torchrun -m edgexfer finetune ...`` works."""

from edgexfer.cli import main

if __name__ == "__main__":
    main()
