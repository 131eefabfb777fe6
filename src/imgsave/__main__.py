from imgsave.cli import main

main()
