"""The page's words in each language it speaks: a human label for each config key (the key itself stays beside it,
so the YAML and the docs can be found from the form), the tabs and the buttons.

English and Chinese (LLaMA-Factory's users, and the seed documents, are largely Chinese-speaking). A key with no
entry here shows the key alone, so a field added to the form is never unlabelled.
"""

from __future__ import annotations

LANGUAGES = {"English": "en", "中文": "zh"}

KEYS: dict[str, tuple[str, str]] = {
    "model_name_or_path": ("Model path", "模型路径"),
    "template": ("Chat template", "对话模板"),
    "method": ("Fine-tuning method", "微调方法"),
    "precision": ("Precision", "计算精度"),
    "lora_rank": ("LoRA rank", "LoRA 秩"),
    "lora_alpha": ("LoRA alpha", "LoRA 缩放系数"),
    "lora_dropout": ("LoRA dropout", "LoRA 随机丢弃"),
    "lora_target": ("LoRA target modules", "LoRA 作用模块"),
    "oft_block_size": ("OFT block size", "OFT 块大小"),
    "oft_target": ("OFT target modules", "OFT 作用模块"),
    "freeze_trainable_layers": ("Trainable layers", "可训练层数"),
    "dataset_dir": ("Data folder", "数据路径"),
    "dataset": ("Datasets", "数据集"),
    "cutoff_len": ("Cutoff length", "截断长度"),
    "val_size": ("Validation size", "验证集比例"),
    "packing": ("Pack sequences", "序列打包"),
    "learning_rate": ("Learning rate", "学习率"),
    "num_train_epochs": ("Epochs", "训练轮数"),
    "max_steps": ("Max steps", "最大步数"),
    "per_device_train_batch_size": ("Batch size per device", "每设备批大小"),
    "gradient_accumulation_steps": ("Gradient accumulation", "梯度累积"),
    "lr_scheduler_type": ("LR scheduler", "学习率调节器"),
    "warmup_steps": ("Warmup steps", "预热步数"),
    "logging_steps": ("Logging steps", "日志间隔"),
    "eval_strategy": ("Evaluation strategy", "评估策略"),
    "eval_steps": ("Eval steps", "评估间隔"),
    "save_steps": ("Save steps", "保存间隔"),
    "output_dir": ("Output folder", "输出目录"),
}

WORDS: dict[str, tuple[str, str]] = {
    "tab-setup": ("Setup", "设置"),
    "tab-data": ("Data", "数据"),
    "tab-run": ("Run", "训练"),
    "tab-runs": ("Runs", "运行记录"),
    "tab-chat": ("Chat", "对话"),
    "tab-eval": ("Evaluate & Predict", "评估与预测"),
    "tab-export": ("Export", "导出"),
    "start-button": ("Start", "开始"),
    "stop-button": ("Stop (save and stop)", "中断（保存并停止）"),
    "resume-button": ("Resume", "继续训练"),
    "validate-button": ("Validate", "校验"),
    "load-button": ("Load into the form", "载入参数"),
    "save-button": ("Save arguments", "保存参数"),
    "preview-button": ("Preview", "预览数据"),
    "stats-button": ("Statistics and plots", "统计与图表"),
    "chat-send": ("Send", "发送"),
    "chat-unload": ("Unload models", "卸载模型"),
    "eval-button": ("Evaluate (loss)", "评估（损失）"),
    "predict-button": ("Predict", "预测"),
    "language": ("Language", "语言"),
    "preset": ("Model preset", "模型预设"),
}


def label(key: str, lang: str = "en") -> str:
    """A config key's label: the human words, then the key (`Learning rate (learning_rate)`)."""
    words = KEYS.get(key)
    if words is None:
        return key
    return f"{words[0] if lang == 'en' else words[1]} ({key})"


def word(name: str, lang: str = "en") -> str:
    en, zh = WORDS[name]
    return en if lang == "en" else zh
